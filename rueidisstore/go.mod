module github.com/idemgo/idem/rueidisstore

go 1.25.0

require (
	github.com/idemgo/idem v0.1.0
	github.com/redis/rueidis v1.0.79
)

require golang.org/x/sys v0.47.0 // indirect

replace github.com/idemgo/idem => ..
