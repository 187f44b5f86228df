module github.com/idemgo/idem/internal/routers

go 1.22

require github.com/idemgo/idem v0.1.0

replace github.com/idemgo/idem => ../..

require (
	github.com/go-chi/chi/v5 v5.2.3
	github.com/gorilla/mux v1.8.1
)
