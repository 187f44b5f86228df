package testenv_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/idemgo/idem/internal/testenv"
)

// The helper's three answers, each in a child test process so that a skip
// or a failure can be observed from outside: the value when set, a skip
// when unset, a failure when unset under CI=true.
func TestServer(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		t.Logf("value=%q", testenv.Server(t, "TESTENV_PROBE", "a probe server"))
		return
	}
	for _, tc := range []struct {
		name   string
		env    []string
		args   []string
		fails  bool
		output string
	}{
		{"set", []string{"TESTENV_PROBE=127.0.0.1:1", "CI="}, nil, false, `value="127.0.0.1:1"`},
		{"unset", []string{"TESTENV_PROBE=", "CI="}, nil, false, "--- SKIP: TestServer"},
		{"unset in CI", []string{"TESTENV_PROBE=", "CI=true"}, nil, true, "TESTENV_PROBE not set"},
		{"short", []string{"TESTENV_PROBE=127.0.0.1:1", "CI=true"}, []string{"-test.short"}, false, "skipped under -short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-test.run=^TestServer$", "-test.v"}, tc.args...)
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), "TESTENV_CHILD=1")
			cmd.Env = append(cmd.Env, tc.env...)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.fails {
				t.Fatalf("child failed = %v, want %v:\n%s", failed, tc.fails, out)
			}
			if !strings.Contains(string(out), tc.output) {
				t.Fatalf("child output lacks %q:\n%s", tc.output, out)
			}
		})
	}
}
