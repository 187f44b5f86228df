module github.com/idemgo/idem/internal/consumers

go 1.22
