// Package consumers_test checks what idem costs the module graph of a
// program that uses it: each case builds a throwaway consumer module that
// imports some of idem's packages, tidies it, and lists the modules it ends
// up with. It is a module of its own, with no requirements, so that it
// sees idem exactly as a user's module does.
package consumers_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// repoRoot is the root of the idem repository, two levels up.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// tidyConsumer writes a consumer module whose main.go imports imports,
// replaces idem's modules by the local checkout, runs go mod tidy, and
// returns the requirements of its go.mod and every module of its graph.
func tidyConsumer(t *testing.T, imports []string, idemModules []string) (required, graph []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds throwaway modules with go mod tidy; skipped with -short")
	}
	dir := t.TempDir()
	root := repoRoot(t)
	var mod strings.Builder
	mod.WriteString("module example.com/consumer\n\ngo 1.22\n\n")
	for _, m := range idemModules {
		mod.WriteString("require " + m + " v0.1.0\n")
		mod.WriteString("replace " + m + " => " + filepath.Join(root, strings.TrimPrefix(strings.TrimPrefix(m, "github.com/idemgo/idem"), "/")) + "\n")
	}
	var src strings.Builder
	src.WriteString("package main\n\nimport (\n")
	for _, p := range imports {
		src.WriteString("\t_ \"" + p + "\"\n")
	}
	src.WriteString(")\n\nfunc main() {}\n")
	write(t, filepath.Join(dir, "go.mod"), mod.String())
	write(t, filepath.Join(dir, "main.go"), src.String())

	goCmd(t, dir, "mod", "tidy")
	out := goCmd(t, dir, "list", "-m", "-f", "{{if not .Main}}{{.Path}}{{end}}", "all")
	graph = nonEmptyLines(out)
	out = goCmd(t, dir, "list", "-m", "-f", "{{if not .Main}}{{if not .Indirect}}{{.Path}}{{end}}{{end}}", "all")
	required = nonEmptyLines(out)
	return required, graph
}

func goCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// A program that uses only the middleware and the in-memory store needs
// nothing but idem: no driver, router, test or benchmark dependency of
// idem's reaches its module graph.
func TestRootAndMemstoreBringNothingElse(t *testing.T) {
	required, graph := tidyConsumer(t,
		[]string{"github.com/idemgo/idem", "github.com/idemgo/idem/memstore", "github.com/idemgo/idem/storetest"},
		[]string{"github.com/idemgo/idem"})
	want := []string{"github.com/idemgo/idem"}
	if strings.Join(graph, " ") != strings.Join(want, " ") {
		t.Fatalf("module graph = %v, want only %v", graph, want)
	}
	if strings.Join(required, " ") != strings.Join(want, " ") {
		t.Fatalf("go.mod requires %v, want only %v", required, want)
	}
}

// A program that uses a store or an adapter with a third-party dependency
// gets that dependency and what it needs in turn: nothing of idem's tests
// (no miniredis, no drivers), nothing of the other stores or adapters.
func TestModulesBringTheirOwnDependenciesOnly(t *testing.T) {
	cases := []struct {
		module string
		// extra lists modules the adapter's tests need that its users
		// have anyway, with the reason.
		extra map[string]string
	}{
		{module: "redisstore"},
		{module: "rueidisstore"},
		{module: "idemprom"},
		{module: "idemotel", extra: map[string]string{
			"go.opentelemetry.io/otel/sdk":        "an OpenTelemetry user exports through the SDK",
			"go.opentelemetry.io/otel/sdk/metric": "likewise for metrics",
		}},
	}
	for _, c := range cases {
		t.Run(c.module, func(t *testing.T) {
			mod := "github.com/idemgo/idem/" + c.module
			required, graph := tidyConsumer(t,
				[]string{"github.com/idemgo/idem", mod},
				[]string{"github.com/idemgo/idem", mod})
			want := []string{"github.com/idemgo/idem", mod}
			if strings.Join(required, " ") != strings.Join(want, " ") {
				t.Fatalf("direct requirements = %v, want %v", required, want)
			}
			allowed := map[string]bool{"github.com/idemgo/idem": true, mod: true}
			for _, m := range libraryDeps(t, filepath.Join(repoRoot(t), c.module), c.extra) {
				allowed[m] = true
			}
			for _, m := range graph {
				if !allowed[m] {
					t.Errorf("module graph holds %s, which neither %s's code nor what it imports requires", m, c.module)
				}
			}
		})
	}
}

// libraryDeps lists the modules whose packages the non-test code of the
// module in dir imports, the modules in extra, and the modules that their
// go.mod files require.
func libraryDeps(t *testing.T, dir string, extra map[string]string) []string {
	t.Helper()
	out := goCmd(t, dir, "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}@{{.Version}}{{end}}{{end}}", "./...")
	used := map[string]bool{}
	for _, l := range nonEmptyLines(out) {
		if !strings.HasPrefix(l, "github.com/idemgo/idem") {
			used[l] = true
		}
	}
	deps := map[string]bool{}
	for _, l := range nonEmptyLines(goCmd(t, dir, "mod", "graph")) {
		from, to, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		if used[from] || extra[strings.SplitN(from, "@", 2)[0]] != "" {
			deps[strings.SplitN(from, "@", 2)[0]] = true
			deps[strings.SplitN(to, "@", 2)[0]] = true
		}
	}
	var list []string
	for m := range deps {
		list = append(list, m)
	}
	sort.Strings(list)
	return list
}

// The SQL store imports no driver, and its module requires none: its users
// bring their own, at the version they choose.
func TestSqlstoreBringsNothingElse(t *testing.T) {
	required, graph := tidyConsumer(t,
		[]string{"github.com/idemgo/idem/sqlstore"},
		[]string{"github.com/idemgo/idem", "github.com/idemgo/idem/sqlstore"})
	want := []string{"github.com/idemgo/idem/sqlstore"}
	if strings.Join(required, " ") != strings.Join(want, " ") {
		t.Fatalf("direct requirements = %v, want %v", required, want)
	}
	wantGraph := []string{"github.com/idemgo/idem", "github.com/idemgo/idem/sqlstore"}
	if strings.Join(graph, " ") != strings.Join(wantGraph, " ") {
		t.Fatalf("module graph = %v, want only %v", graph, wantGraph)
	}
}
