module github.com/idemgo/idem/cmd/idemproxy

go 1.25.0

require (
	github.com/idemgo/idem v0.1.0
	github.com/idemgo/idem/idemprom v0.1.0
	github.com/idemgo/idem/internal/storeurl v0.1.0
	github.com/prometheus/client_golang v1.22.0
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dgryski/go-rendezvous v0.0.0-20200823014737-9f7001d12a5f // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/go-sql-driver/mysql v1.10.1 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/idemgo/idem/redisstore v0.1.0 // indirect
	github.com/idemgo/idem/rueidisstore v0.1.0 // indirect
	github.com/idemgo/idem/sqlstore v0.1.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.7.4 // indirect
	github.com/jackc/puddle/v2 v2.2.2 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/ncruces/go-strftime v1.0.0 // indirect
	github.com/prometheus/client_model v0.6.1 // indirect
	github.com/prometheus/common v0.62.0 // indirect
	github.com/prometheus/procfs v0.15.1 // indirect
	github.com/redis/go-redis/v9 v9.17.3 // indirect
	github.com/redis/rueidis v1.0.79 // indirect
	github.com/remyoudompheng/bigfft v0.0.0-20230129092748-24d4a6f8daec // indirect
	golang.org/x/crypto v0.31.0 // indirect
	golang.org/x/sync v0.22.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.41.0 // indirect
	google.golang.org/protobuf v1.36.5 // indirect
	modernc.org/libc v1.74.4 // indirect
	modernc.org/mathutil v1.7.1 // indirect
	modernc.org/memory v1.11.0 // indirect
	modernc.org/sqlite v1.57.0 // indirect
)

replace (
	github.com/idemgo/idem => ../..
	github.com/idemgo/idem/idemprom => ../../idemprom
	github.com/idemgo/idem/internal/storeurl => ../../internal/storeurl
	github.com/idemgo/idem/redisstore => ../../redisstore
	github.com/idemgo/idem/rueidisstore => ../../rueidisstore
	github.com/idemgo/idem/sqlstore => ../../sqlstore
)
