// Command mutate is a small mutation tester for this repository. It plants
// one bug at a time in the Go files of one package, runs the tests that
// reach it, and reports which planted bugs ("mutants") the tests did not
// notice.
//
// It works on a copy of the repository in a temporary directory, so the
// working tree is never touched:
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
// First every test of the judging module (the packages under -test) runs
// alone with a coverage profile, which tells which tests reach which
// blocks of the mutated package. A mutant in a block no test reaches is
// "not covered"; the others are judged by the tests that reach them, the
// quickest first, stopping at the first failure. A mutant that does not
// compile (a deleted statement that leaves a variable unused) is "not
// viable". A mutant is "killed" when a test fails or runs past its time
// limit. A mutant the tests pass is then checked with go vet and, when it
// is installed, staticcheck, as CI checks every change: one they reject is
// killed too. The rest "lived".
//
// Survivors that no test can tell from the original (only allocations or
// timing differ) are listed, each with its reason, in the files of
// equivalent mutants (-equivalent, one file for each package or part). They are reported apart, but they still count as
// survivors: efficacy is killed / (killed + lived + equivalent).
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// mutant is one planted bug: the bytes [start, end) of file replaced by
// repl.
type mutant struct {
	file      string // relative to the package directory
	fn        string // enclosing function or method
	line, col int
	// Where coverage is looked up: the mutant's own position, except in
	// a switch's case expressions, which Go's coverage puts in no block;
	// they run when the switch does.
	covLine, covCol int
	start, end      int
	repl            string
	desc            string
	text            string // the source line, trimmed
	status          string
	by              string // what killed it
}

// key names a mutant in the equivalents file; it does not depend on line
// numbers, so unrelated edits leave it valid.
func (m *mutant) key() string {
	return fmt.Sprintf("%s:%s: %s «%s»", m.file, m.fn, m.desc, m.text)
}

type config struct {
	repo, pkg, testDir string
	run                *regexp.Regexp
	short              bool
	only               string
	equivalent         string
	jobs               int
}

func main() {
	var c config
	flag.StringVar(&c.repo, "repo", ".", "root of the repository")
	flag.StringVar(&c.pkg, "pkg", ".", "directory of the package to mutate, relative to -repo")
	flag.StringVar(&c.testDir, "test", "", "directory of the module whose tests judge the mutants, relative to -repo (default -pkg)")
	run := flag.String("run", "", "only tests whose names match this regular expression")
	flag.BoolVar(&c.short, "short", false, "run the tests with -short")
	flag.StringVar(&c.only, "only", "", "mutate only these files (comma-separated names)")
	flag.StringVar(&c.equivalent, "equivalent", "internal/mutate/equivalent", "directory of the files (*.txt) of mutants judged equivalent, relative to -repo")
	flag.IntVar(&c.jobs, "j", 1, "mutants judged at once, each in its own copy of the repository (keep 1 for tests that share servers)")
	flag.Parse()
	c.jobs = max(c.jobs, 1)
	if c.testDir == "" {
		c.testDir = c.pkg
	}
	var err error
	if c.run, err = regexp.Compile(*run); err != nil {
		fmt.Fprintln(os.Stderr, "mutate: -run:", err)
		os.Exit(2)
	}
	if err := mainErr(c); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(1)
	}
}

// testPkg is one package of the judging module with tests.
type testPkg struct {
	importPath, dir string
	tests           []*test
}

// test is one top-level test (or example, or fuzz target's seeds) and what
// it reaches.
type test struct {
	name   string
	pkg    *testPkg
	took   time.Duration
	blocks coverage
}

func mainErr(c config) error {
	files, err := filepath.Glob(filepath.Join(c.repo, c.equivalent, "*.txt"))
	if err != nil {
		return err
	}
	equivalent := map[string]bool{}
	for _, f := range files {
		if err := readEquivalents(f, equivalent); err != nil {
			return err
		}
	}
	tmp, err := os.MkdirTemp("", "idem-mutate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// Stopped with ^C or kill, leave no copy of the repository behind.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-stop
		os.RemoveAll(tmp)
		os.Exit(130)
	}()
	// One copy of the repository for each worker: a mutant is planted in
	// its worker's copy only.
	copies := make([]string, c.jobs)
	for i := range copies {
		copies[i] = filepath.Join(tmp, fmt.Sprintf("w%d", i))
		if err := copyTree(c.repo, copies[i]); err != nil {
			return err
		}
	}
	pkgDir := filepath.Join(copies[0], c.pkg)
	importPath, err := goList(pkgDir, ".", "{{.ImportPath}}")
	if err != nil {
		return err
	}
	pkgs, err := measure(c, filepath.Join(copies[0], c.testDir), importPath, tmp)
	if err != nil {
		return err
	}

	mutants, sources, err := findMutants(pkgDir, c.only)
	if err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		done   int
		next   = make(chan int)
		wg     sync.WaitGroup
	)
	for w := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				m := &mutants[i]
				reach := reaching(pkgs, m)
				if len(reach) == 0 {
					m.status = "not covered"
				} else {
					m.status, m.by = try(c, m, copies[0], copies[w], sources[m.file], reach, filepath.Join(tmp, fmt.Sprintf("w%d-", w)))
					if m.status == "lived" && equivalent[m.key()] {
						m.status = "equivalent"
					}
				}
				by := ""
				if m.by != "" {
					by = " (" + m.by + ")"
				}
				mu.Lock()
				counts[m.status]++
				done++
				fmt.Fprintf(os.Stderr, "%4d/%d %-11s %s:%d:%d %s%s\n", done, len(mutants), m.status, filepath.Join(c.pkg, m.file), m.line, m.col, m.desc, by)
				mu.Unlock()
			}
		}()
	}
	for i := range mutants {
		next <- i
	}
	close(next)
	wg.Wait()

	fmt.Printf("package %s (judged by the tests in %s", importPath, c.testDir)
	if c.run.String() != "" {
		fmt.Printf(" matching %q", c.run)
	}
	fmt.Println(")")
	seen := map[string]bool{}
	for _, m := range mutants {
		switch m.status {
		case "lived":
			fmt.Printf("  LIVED %s:%d:%d\n        %s\n", filepath.Join(c.pkg, m.file), m.line, m.col, m.key())
		case "equivalent":
			seen[m.key()] = true
		}
	}
	for k := range equivalent {
		if !seen[k] && mentions(mutants, k) {
			fmt.Printf("  listed as equivalent but killed: %s\n", k)
		}
	}
	killed := counts["killed"] + counts["timed out"]
	survived := counts["lived"] + counts["equivalent"]
	efficacy := 100.0
	if killed+survived > 0 {
		efficacy = 100 * float64(killed) / float64(killed+survived)
	}
	fmt.Printf("mutants %d: killed %d (timed out %d), lived %d, equivalent %d, not covered %d, not viable %d; efficacy %.1f%% of covered mutants\n",
		len(mutants), killed, counts["timed out"], counts["lived"], counts["equivalent"], counts["not covered"], counts["not viable"], efficacy)
	if n := counts["error"]; n > 0 {
		return fmt.Errorf("%d mutants could not be judged (see the progress lines marked error)", n)
	}
	return nil
}

// mentions reports whether key names one of mutants, so that a listed
// equivalent that was killed is reported, and entries for other packages
// are not.
func mentions(mutants []mutant, key string) bool {
	for i := range mutants {
		if mutants[i].key() == key {
			return true
		}
	}
	return false
}

// measure lists the tests of the module at dir and runs each alone with a
// coverage profile of importPath. Every test must pass.
func measure(c config, dir, importPath, tmp string) ([]*testPkg, error) {
	list, err := goList(dir, "./...", "{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}")
	if err != nil {
		return nil, err
	}
	var pkgs []*testPkg
	for i, line := range strings.Fields(strings.ReplaceAll(list, "\n", " ")) {
		if i%2 == 0 {
			pkgs = append(pkgs, &testPkg{importPath: line})
		} else {
			pkgs[len(pkgs)-1].dir = line
		}
	}
	for i, p := range pkgs {
		bin := filepath.Join(tmp, fmt.Sprintf("cover%d.test", i))
		if out, err := goCmd(context.Background(), p.dir, "test", "-c", "-o", bin, "-cover", "-covermode=set", "-coverpkg="+importPath); err != nil {
			return nil, fmt.Errorf("building the tests of %s: %v\n%s", p.importPath, err, tail(out))
		}
		names, err := listTests(p.dir, bin)
		if err != nil {
			return nil, fmt.Errorf("listing the tests of %s: %w", p.importPath, err)
		}
		for _, name := range names {
			if !c.run.MatchString(name) {
				continue
			}
			profile := filepath.Join(tmp, "cover.out")
			start := time.Now()
			out, err := runTests(context.Background(), p.dir, bin, []string{name}, c.short, "-test.coverprofile="+profile)
			if err != nil {
				return nil, fmt.Errorf("%s %s fails before any mutation:\n%s", p.importPath, name, tail(out))
			}
			t := &test{name: name, pkg: p, took: time.Since(start)}
			if t.blocks, err = readProfile(profile, importPath); err != nil {
				return nil, err
			}
			if len(t.blocks) > 0 {
				p.tests = append(p.tests, t)
			}
			fmt.Fprintf(os.Stderr, "measured %s %s (%v)\n", p.importPath, name, t.took.Round(time.Millisecond))
		}
	}
	return pkgs, nil
}

func listTests(dir, bin string) ([]string, error) {
	cmd := exec.Command(bin, "-test.list", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range strings.Fields(string(out)) {
		if !strings.HasPrefix(n, "Benchmark") {
			names = append(names, n)
		}
	}
	return names, nil
}

// reaching returns the tests that reach m, the quickest first.
func reaching(pkgs []*testPkg, m *mutant) []*test {
	var out []*test
	for _, p := range pkgs {
		for _, t := range p.tests {
			if t.blocks.has(m.file, m.covLine, m.covCol) {
				out = append(out, t)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].took < out[j].took })
	return out
}

// try applies m to the worker's copy of the repository, judges it and
// restores the file. The tests were measured in the copy at base; binaries
// are written to names starting with binPrefix.
func try(c config, m *mutant, base, dir string, src []byte, reach []*test, binPrefix string) (status, by string) {
	in := func(measured string) string {
		rel, err := filepath.Rel(base, measured)
		if err != nil {
			panic(err)
		}
		return filepath.Join(dir, rel)
	}
	pkgDir := filepath.Join(dir, c.pkg)
	path := filepath.Join(pkgDir, m.file)
	mutated := append(append(append([]byte{}, src[:m.start]...), m.repl...), src[m.end:]...)
	if err := os.WriteFile(path, mutated, 0o644); err != nil {
		return "error", err.Error()
	}
	defer os.WriteFile(path, src, 0o644)
	// A mutant that does not compile is not viable rather than killed.
	if _, err := goCmd(context.Background(), pkgDir, "build", "-o", os.DevNull, "."); err != nil {
		return "not viable", ""
	}
	// The test binaries of the packages whose tests reach m, built once.
	bins := map[*testPkg]string{}
	for _, t := range reach {
		if _, ok := bins[t.pkg]; ok {
			continue
		}
		bin := fmt.Sprintf("%smutant%d.test", binPrefix, len(bins))
		if out, err := goCmd(context.Background(), in(t.pkg.dir), "test", "-c", "-vet=off", "-o", bin); err != nil {
			return "error", fmt.Sprintf("building the tests: %v: %s", err, tail(out))
		}
		bins[t.pkg] = bin
	}
	for _, t := range reach {
		// Three times the test's own time and five seconds more: a mutant
		// that makes a test hang is killed without waiting for
		// -test.timeout.
		ctx, cancel := context.WithTimeout(context.Background(), 3*t.took+5*time.Second)
		_, err := runTests(ctx, in(t.pkg.dir), bins[t.pkg], []string{t.name}, c.short)
		timedOut := ctx.Err() != nil
		cancel()
		switch {
		case timedOut:
			return "timed out", t.name
		case err != nil:
			return "killed", t.name
		}
	}
	// CI rejects a change go vet or staticcheck finds fault with.
	if _, err := goCmd(context.Background(), pkgDir, "vet", "."); err != nil {
		return "killed", "go vet"
	}
	if sc := staticcheck(); sc != "" {
		cmd := exec.Command(sc, ".")
		cmd.Dir, cmd.Env = pkgDir, append(os.Environ(), "GOWORK=off")
		if err := cmd.Run(); err != nil {
			return "killed", "staticcheck"
		}
	}
	return "lived", ""
}

// staticcheck returns the path of an installed staticcheck, or "".
func staticcheck() string {
	if p, err := exec.LookPath("staticcheck"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "bin", "staticcheck")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// runTests runs the named top-level tests of a test binary in dir.
func runTests(ctx context.Context, dir, bin string, names []string, short bool, extra ...string) ([]byte, error) {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	args := []string{"-test.run", "^(" + strings.Join(quoted, "|") + ")$", "-test.count=1", "-test.failfast", "-test.timeout=10m"}
	if short {
		args = append(args, "-test.short")
	}
	cmd := exec.CommandContext(ctx, bin, append(args, extra...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	// A test may start processes of its own: at the timeout, end the
	// whole process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

func goCmd(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	return cmd.CombinedOutput()
}

func goList(dir, pattern, format string) (string, error) {
	out, err := goCmd(context.Background(), dir, "list", "-f", format, pattern)
	if err != nil {
		return "", fmt.Errorf("go list in %s: %v\n%s", dir, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// --- equivalent mutants ----------------------------------------------------------

// readEquivalents adds to out the mutants a file lists as equivalent: each
// entry is a mutant's key on a line of its own (as the report prints it),
// followed by one or more indented lines saying why no test can kill it.
// Lines starting with # are comments.
func readEquivalents(path string, out map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	last, reasoned := "", true // the entry read last, and whether it has a reason
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return fmt.Errorf("%s:%d: a reason before any mutant", path, i+1)
			}
			reasoned = true
		default:
			if !reasoned {
				return fmt.Errorf("%s: no reason given for %s", path, last)
			}
			last, reasoned = strings.TrimSpace(line), false
			out[last] = true
		}
	}
	if !reasoned {
		return fmt.Errorf("%s: no reason given for %s", path, last)
	}
	return nil
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
	fn := ""
	// The case expressions of each switch, and the switch's position.
	type caseList struct{ from, to, sw token.Pos }
	var cases []caseList
	ast.Inspect(f, func(n ast.Node) bool {
		var body *ast.BlockStmt
		switch n := n.(type) {
		case *ast.SwitchStmt:
			body = n.Body
		case *ast.TypeSwitchStmt:
			body = n.Body
		default:
			return true
		}
		for _, st := range body.List {
			if cc, ok := st.(*ast.CaseClause); ok && len(cc.List) > 0 {
				cases = append(cases, caseList{cc.List[0].Pos(), cc.List[len(cc.List)-1].End(), n.Pos()})
			}
		}
		return true
	})
	add := func(pos, end token.Pos, repl, desc string) {
		p := fset.Position(pos)
		cov := p
		for _, c := range cases {
			if pos >= c.from && pos < c.to {
				cov = fset.Position(c.sw)
			}
		}
		out = append(out, mutant{file: name, fn: fn, line: p.Line, col: p.Column, covLine: cov.Line, covCol: cov.Column,
			start: p.Offset, end: fset.Position(end).Offset, repl: repl, desc: desc, text: lineAt(src, p.Offset)})
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.GenDecl:
			// Constants and package-level variables: their expressions are
			// evaluated at start-up, outside any coverage block.
			continue
		case *ast.FuncDecl:
			fn = funcName(d)
		}
		ast.Inspect(d, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.BinaryExpr:
				if to, ok := swaps[n.Op]; ok && !isStringConcat(n) {
					add(n.OpPos, n.OpPos+token.Pos(len(n.Op.String())), to.String(), fmt.Sprintf("%s -> %s", n.Op, to))
				}
			case *ast.UnaryExpr:
				if n.Op == token.NOT {
					add(n.OpPos, n.OpPos+1, "", "remove !")
				}
			case *ast.BlockStmt:
				deletions(n.List, add, fset, src)
			case *ast.CaseClause:
				deletions(n.Body, add, fset, src)
			case *ast.CommClause:
				deletions(n.Body, add, fset, src)
			}
			return true
		})
	}
	return out
}

func deletions(list []ast.Stmt, add func(pos, end token.Pos, repl, desc string), fset *token.FileSet, src []byte) {
	for _, st := range list {
		if deletable(st) {
			add(st.Pos(), st.End(), "{}", "delete "+firstLine(src[fset.Position(st.Pos()).Offset:fset.Position(st.End()).Offset]))
		}
	}
}

// funcName names a function declaration as a reader would: F, T.M or
// (*T).M.
func funcName(d *ast.FuncDecl) string {
	if d.Recv == nil || len(d.Recv.List) == 0 {
		return d.Name.Name
	}
	t := d.Recv.List[0].Type
	if ix, ok := t.(*ast.IndexExpr); ok { // generic receiver T[K]
		t = ix.X
	}
	switch t := t.(type) {
	case *ast.StarExpr:
		x := t.X
		if ix, ok := x.(*ast.IndexExpr); ok {
			x = ix.X
		}
		if id, ok := x.(*ast.Ident); ok {
			return "(*" + id.Name + ")." + d.Name.Name
		}
	case *ast.Ident:
		return t.Name + "." + d.Name.Name
	}
	return d.Name.Name
}

func lineAt(src []byte, off int) string {
	start := bytes.LastIndexByte(src[:off], '\n') + 1
	end := bytes.IndexByte(src[off:], '\n')
	if end < 0 {
		end = len(src) - off
	}
	return strings.TrimSpace(string(src[start : off+end]))
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
