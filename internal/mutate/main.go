// Command mutate is a small mutation tester for this repository. It plants
// one bug at a time in the Go files of one package, runs a test command,
// and reports which planted bugs ("mutants") the tests did not notice.
//
// It works on a copy of the repository in a temporary directory, so the
// working tree is never touched, and it runs one test command at a time:
//
//	go run ./internal/mutate -repo . -pkg memstore -test memstore
//	go run ./internal/mutate -repo . -pkg redisstore -test redisstore/tests -run 'Conformance|Load'
//
// The mutants, each applied alone:
//
//   - a comparison negated or its boundary moved (== and !=, < and <=,
//     > and >=, each into the other);
//   - && and || swapped; a ! removed;
//   - + and - swapped;
//   - a statement deleted (a call, an assignment with =, ++ and --, defer,
//     go, break and continue).
//
// Only covered mutants are run: the tests are run once with a coverage
// profile, and a mutant in a block no test reaches is reported as not
// covered. A mutant that does not compile (a deleted statement that leaves
// a variable unused) is "not viable". A mutant is "killed" when the test
// command fails or runs past the timeout, and "lived" when it passes.
// Efficacy is killed / (killed + lived).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// mutant is one planted bug: the bytes [start, end) of file replaced by
// repl.
type mutant struct {
	file       string // relative to the package directory
	line, col  int
	start, end int
	repl       string
	desc       string
	status     string
}

func main() {
	repo := flag.String("repo", ".", "root of the repository")
	pkg := flag.String("pkg", ".", "directory of the package to mutate, relative to -repo")
	testDir := flag.String("test", "", "directory of the module whose tests judge the mutants, relative to -repo (default -pkg)")
	run := flag.String("run", "", "go test -run pattern")
	timeout := flag.Duration("timeout", 0, "time allowed to one test run (default: twice the first run, at least 10s)")
	short := flag.Bool("short", false, "pass -short to go test")
	only := flag.String("only", "", "mutate only these files (comma-separated names)")
	flag.Parse()
	if *testDir == "" {
		*testDir = *pkg
	}
	if err := mainErr(*repo, *pkg, *testDir, *run, *only, *timeout, *short); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(1)
	}
}

func mainErr(repo, pkg, testDir, run, only string, timeout time.Duration, short bool) error {
	tmp, err := os.MkdirTemp("", "idem-mutate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := copyTree(repo, tmp); err != nil {
		return err
	}
	pkgDir := filepath.Join(tmp, pkg)
	importPath, err := goList(pkgDir)
	if err != nil {
		return err
	}

	// One run with coverage: it must pass, and it tells which blocks the
	// tests reach and how long a run takes.
	profile := filepath.Join(tmp, "cover.out")
	args := testArgs(run, short, "-coverpkg="+importPath, "-coverprofile="+profile)
	start := time.Now()
	if out, err := goTest(context.Background(), filepath.Join(tmp, testDir), args); err != nil {
		return fmt.Errorf("the tests fail before any mutation:\n%s", tail(out))
	}
	if timeout == 0 {
		timeout = max(10*time.Second, 2*time.Since(start))
	}
	covered, err := readProfile(profile, importPath)
	if err != nil {
		return err
	}

	mutants, sources, err := findMutants(pkgDir, only)
	if err != nil {
		return err
	}
	counts := map[string]int{}
	for i := range mutants {
		m := &mutants[i]
		if !covered.has(m.file, m.line, m.col) {
			m.status = "not covered"
			counts[m.status]++
			continue
		}
		m.status = try(m, pkgDir, filepath.Join(tmp, testDir), sources[m.file], run, short, timeout)
		counts[m.status]++
		fmt.Fprintf(os.Stderr, "%4d/%d %-11s %s:%d:%d %s\n", i+1, len(mutants), m.status, filepath.Join(pkg, m.file), m.line, m.col, m.desc)
	}

	fmt.Printf("package %s (tests: go test %s in %s)\n", importPath, strings.Join(testArgs(run, short), " "), testDir)
	for _, m := range mutants {
		if m.status == "lived" {
			fmt.Printf("  LIVED %s:%d:%d %s\n", filepath.Join(pkg, m.file), m.line, m.col, m.desc)
		}
	}
	killed, lived := counts["killed"]+counts["timed out"], counts["lived"]
	efficacy := 100.0
	if killed+lived > 0 {
		efficacy = 100 * float64(killed) / float64(killed+lived)
	}
	fmt.Printf("mutants %d: killed %d (timed out %d), lived %d, not covered %d, not viable %d; efficacy %.1f%% of covered mutants\n",
		len(mutants), killed, counts["timed out"], lived, counts["not covered"], counts["not viable"], efficacy)
	return nil
}

func testArgs(run string, short bool, extra ...string) []string {
	args := []string{"-count=1", "-failfast", "-timeout=10m"}
	if run != "" {
		args = append(args, "-run", run)
	}
	if short {
		args = append(args, "-short")
	}
	return append(args, extra...)
}

// try applies m to the package copy, judges it and restores the file.
func try(m *mutant, pkgDir, testDir string, src []byte, run string, short bool, timeout time.Duration) string {
	path := filepath.Join(pkgDir, m.file)
	mutated := append(append(append([]byte{}, src[:m.start]...), m.repl...), src[m.end:]...)
	if err := os.WriteFile(path, mutated, 0o644); err != nil {
		return "error: " + err.Error()
	}
	defer os.WriteFile(path, src, 0o644)
	// A mutant that does not compile is not viable rather than killed.
	build := exec.Command("go", "build", "-o", os.DevNull, ".")
	build.Dir, build.Env = pkgDir, append(os.Environ(), "GOWORK=off")
	if err := build.Run(); err != nil {
		return "not viable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := goTest(ctx, testDir, testArgs(run, short))
	switch {
	case ctx.Err() != nil:
		return "timed out"
	case err != nil:
		return "killed"
	}
	return "lived"
}

func goTest(ctx context.Context, dir string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"test"}, append(args, "./...")...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	// go test runs the test binary as a child: at the timeout, end the
	// whole process group, or a hung test binary outlives the run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

func goList(dir string) (string, error) {
	cmd := exec.Command("go", "list", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list in %s: %w", dir, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// --- finding mutants -----------------------------------------------------------

func findMutants(dir, only string) ([]mutant, map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	var all []mutant
	sources := map[string][]byte{}
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		if only != "" && !slices.Contains(strings.Split(only, ","), name) {
			continue
		}
		src, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		f, err := parser.ParseFile(fset, name, src, parser.ParseComments)
		if err != nil {
			return nil, nil, err
		}
		sources[name] = src
		all = append(all, fileMutants(fset, f, name, src)...)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].file != all[j].file {
			return all[i].file < all[j].file
		}
		return all[i].start < all[j].start
	})
	return all, sources, nil
}

var swaps = map[token.Token]token.Token{
	token.EQL: token.NEQ, token.NEQ: token.EQL,
	token.LSS: token.LEQ, token.LEQ: token.LSS,
	token.GTR: token.GEQ, token.GEQ: token.GTR,
	token.LAND: token.LOR, token.LOR: token.LAND,
	token.ADD: token.SUB, token.SUB: token.ADD,
}

func fileMutants(fset *token.FileSet, f *ast.File, name string, src []byte) []mutant {
	var out []mutant
	add := func(pos, end token.Pos, repl, desc string) {
		p := fset.Position(pos)
		out = append(out, mutant{file: name, line: p.Line, col: p.Column, start: p.Offset, end: fset.Position(end).Offset, repl: repl, desc: desc})
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GenDecl:
			// Constants and package-level variables: their expressions are
			// evaluated at start-up, outside any coverage block.
			return n.Tok != token.CONST && n.Tok != token.VAR
		case *ast.BinaryExpr:
			if to, ok := swaps[n.Op]; ok && !isStringConcat(n) {
				add(n.OpPos, n.OpPos+token.Pos(len(n.Op.String())), to.String(), fmt.Sprintf("%s -> %s", n.Op, to))
			}
		case *ast.UnaryExpr:
			if n.Op == token.NOT {
				add(n.OpPos, n.OpPos+1, "", "remove !")
			}
		case *ast.BlockStmt:
			for _, st := range n.List {
				if deletable(st) {
					add(st.Pos(), st.End(), "{}", "delete "+firstLine(src[fset.Position(st.Pos()).Offset:fset.Position(st.End()).Offset]))
				}
			}
		case *ast.CaseClause:
			for _, st := range n.Body {
				if deletable(st) {
					add(st.Pos(), st.End(), "{}", "delete "+firstLine(src[fset.Position(st.Pos()).Offset:fset.Position(st.End()).Offset]))
				}
			}
		}
		return true
	})
	return out
}

// isStringConcat reports whether n is a + of string literals, which a swap
// to - would only make uncompilable.
func isStringConcat(n *ast.BinaryExpr) bool {
	if n.Op != token.ADD {
		return false
	}
	for _, e := range []ast.Expr{n.X, n.Y} {
		if l, ok := e.(*ast.BasicLit); ok && l.Kind == token.STRING {
			return true
		}
	}
	return false
}

func deletable(st ast.Stmt) bool {
	switch st := st.(type) {
	case *ast.ExprStmt, *ast.IncDecStmt, *ast.DeferStmt, *ast.GoStmt:
		return true
	case *ast.AssignStmt:
		return st.Tok != token.DEFINE
	case *ast.BranchStmt:
		return st.Tok == token.BREAK || st.Tok == token.CONTINUE
	}
	return false
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	return s
}

// --- coverage ------------------------------------------------------------------

type block struct{ l0, c0, l1, c1 int }

type coverage map[string][]block // file name -> covered blocks

func (c coverage) has(file string, line, col int) bool {
	for _, b := range c[file] {
		after := line > b.l0 || line == b.l0 && col >= b.c0
		before := line < b.l1 || line == b.l1 && col <= b.c1
		if after && before {
			return true
		}
	}
	return false
}

// readProfile reads the covered blocks of package importPath from a go test
// coverage profile.
func readProfile(path, importPath string) (coverage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cov := coverage{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "mode:") {
			continue
		}
		// import/path/file.go:l0.c0,l1.c1 statements count
		file, rest, ok := strings.Cut(line, ":")
		if !ok || filepath.Dir(file) != importPath {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 3 || fields[2] == "0" {
			continue
		}
		var b block
		if _, err := fmt.Sscanf(fields[0], "%d.%d,%d.%d", &b.l0, &b.c0, &b.l1, &b.c1); err != nil {
			return nil, fmt.Errorf("profile line %q: %w", line, err)
		}
		name := filepath.Base(file)
		cov[name] = append(cov[name], b)
	}
	return cov, sc.Err()
}

// --- copying ---------------------------------------------------------------------

// copyTree copies the files of the repository at src (without .git) into
// dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() || d.Name() == ".git" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
}
