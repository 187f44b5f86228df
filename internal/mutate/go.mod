module github.com/idemgo/idem/internal/mutate

go 1.22
