module github.com/idemgo/idem/internal/sim

go 1.23

require github.com/idemgo/idem v0.1.0

require pgregory.net/rapid v1.3.0

replace github.com/idemgo/idem => ../..
