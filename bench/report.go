package main

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
	"time"
)

type key struct {
	scenario string
	conns    int
	size     int
	target   string
}

type results struct {
	runs map[key][]measurement
	keys []key // in the order first measured
}

func newResults() *results { return &results{runs: map[key][]measurement{}} }

func (r *results) add(k key, m measurement) {
	if _, ok := r.runs[k]; !ok {
		r.keys = append(r.keys, k)
	}
	r.runs[k] = append(r.runs[k], m)
}

// median returns the medians over the rounds of k.
func (r *results) median(k key) (m measurement, ok bool) {
	ms := r.runs[k]
	if len(ms) == 0 {
		return m, false
	}
	f := func(get func(measurement) float64) float64 {
		v := make([]float64, len(ms))
		for i, x := range ms {
			v[i] = get(x)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m.rps = f(func(x measurement) float64 { return x.rps })
	m.p50 = time.Duration(f(func(x measurement) float64 { return float64(x.p50) }))
	m.p99 = time.Duration(f(func(x measurement) float64 { return float64(x.p99) }))
	m.cmds = f(func(x measurement) float64 { return x.cmds })
	m.cpuServer = f(func(x measurement) float64 { return x.cpuServer })
	m.cpuRedis = f(func(x measurement) float64 { return x.cpuRedis })
	m.cpuLoad = f(func(x measurement) float64 { return x.cpuLoad })
	for _, x := range ms {
		if len(x.bad) > 0 {
			m.bad = x.bad
		}
	}
	return m, true
}

// settings returns the (scenario, conns, size) rows in the order measured.
func (r *results) settings() []key {
	var out []key
	seen := map[key]bool{}
	for _, k := range r.keys {
		s := key{k.scenario, k.conns, k.size, ""}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 1:
		return fmt.Sprintf("%.2f", v)
	case v < 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func rps(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

const (
	nameBare   = "bare net/http"
	nameFiber  = "Fiber"
	nameIdemRu = "idem rueidis"
)

func (r *results) markdown(names []string, o options, info string) string {
	var b strings.Builder
	warned := false
	fmt.Fprintf(&b, "Measured %s; %d round(s) of %v per server and setting, servers in turn; medians over rounds. "+
		"Each cell: requests/s · p50/p99 latency in ms · Redis commands per request.\n\n", info, o.rounds, o.duration)
	b.WriteString("| keys | conns | body |")
	for _, n := range names {
		fmt.Fprintf(&b, " %s |", n)
	}
	b.WriteString(" idem rueidis ÷ Fiber | ÷ bare | p99 ÷ Fiber's |\n|---|---|---|")
	for range names {
		b.WriteString("---|")
	}
	b.WriteString("---|---|---|\n")
	for _, s := range r.settings() {
		fmt.Fprintf(&b, "| %s | %d | %s |", s.scenario, s.conns, sizeName(s.size))
		for _, n := range names {
			m, ok := r.median(key{s.scenario, s.conns, s.size, n})
			if !ok {
				b.WriteString(" – |")
				continue
			}
			warn := ""
			if len(m.bad) > 0 {
				warn, warned = " ⚠", true
			}
			fmt.Fprintf(&b, " %s · %s/%s · %.2f%s |", rps(m.rps), ms(m.p50), ms(m.p99), m.cmds, warn)
		}
		idem, _ := r.median(key{s.scenario, s.conns, s.size, nameIdemRu})
		fiber, _ := r.median(key{s.scenario, s.conns, s.size, nameFiber})
		bare, _ := r.median(key{s.scenario, s.conns, s.size, nameBare})
		fmt.Fprintf(&b, " %s | %s | %s |\n", ratio(idem.rps, fiber.rps), ratio(idem.rps, bare.rps), ratio(float64(idem.p99), float64(fiber.p99)))
	}
	if warned {
		b.WriteString("\n⚠: some answers were not 201 (see the run's output).\n")
	}
	return b.String()
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a/b) {
		return "–"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// svg draws requests per second for every setting of 1 KiB bodies, one
// group of bars per setting, one bar per server.
func (r *results) svg(names []string, o options) string {
	var rows []key
	for _, s := range r.settings() {
		if s.size == 1024 {
			rows = append(rows, s)
		}
	}
	colors := []string{"#888888", "#00acd7", "#f0a030", "#d9534f", "#7a5195", "#2f9e44"}
	const (
		left, top, right, bottom = 70, 40, 20, 90
		groupW, height           = 130, 300
	)
	width := left + right + groupW*len(rows)
	maxV := 1.0
	for _, s := range rows {
		for _, n := range names {
			if m, ok := r.median(key{s.scenario, s.conns, s.size, n}); ok {
				maxV = math.Max(maxV, m.rps)
			}
		}
	}
	step := niceStep(maxV / 5)
	maxV = math.Ceil(maxV/step) * step
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, top+height+bottom)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">Requests per second, 1 KiB bodies (higher is better)</text>`+"\n", left)
	for v := 0.0; v <= maxV+step/2; v += step {
		y := float64(top+height) - v/maxV*height
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, rps(v))
	}
	barW := float64(groupW-20) / float64(len(names))
	for i, s := range rows {
		x0 := float64(left + i*groupW + 10)
		for j, n := range names {
			m, ok := r.median(key{s.scenario, s.conns, s.size, n})
			if !ok {
				continue
			}
			h := m.rps / maxV * height
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %.0f req/s</title></rect>`+"\n",
				x0+float64(j)*barW, float64(top+height)-h, barW-2, h, colors[j%len(colors)], html.EscapeString(n), m.rps)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s keys</text>`+"\n", x0+float64(groupW-20)/2, top+height+16, s.scenario)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d conns</text>`+"\n", x0+float64(groupW-20)/2, top+height+30, s.conns)
	}
	for j, n := range names {
		x := left + (j%3)*220
		y := top + height + 50 + (j/3)*18
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x, y, colors[j%len(colors)], x+16, y+10, html.EscapeString(n))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
