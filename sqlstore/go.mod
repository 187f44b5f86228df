module github.com/idemgo/idem/sqlstore

go 1.22

require github.com/idemgo/idem v0.1.0

replace github.com/idemgo/idem => ..
