package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"

	"github.com/idemgo/idem"
	"github.com/idemgo/idem/sqlstore"
)

// -ledger sql: the payments are rows of a table (example_payments) in the
// database of a SQL -store, and the store runs in transactional mode
// (sqlstore.TxStore): each payment's row is written in the transaction
// that records its response, so a payment exists exactly when its
// idempotency record is completed, whatever crashes in between.

// ledgerTable is the table of payments in -ledger sql.
const ledgerTable = "example_payments"

// sqlLedger keeps payments in the store's database.
type sqlLedger struct {
	db      *sql.DB
	dialect sqlstore.Dialect
}

// transactionalLedger turns a SQL store into its transactional mode and
// creates the payments table next to its records.
func transactionalLedger(ctx context.Context, store idem.Store) (idem.Store, error) {
	s, ok := store.(*sqlstore.Store)
	if !ok {
		return nil, errors.New("-ledger sql needs a SQL -store (sqlite:, postgres:// or mysql://)")
	}
	l := &sqlLedger{db: s.DB(), dialect: s.Dialect()}
	text := "TEXT"
	if l.dialect == sqlstore.MySQL {
		text = "VARCHAR(1024)"
	}
	_, err := l.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+ledgerTable+` (
    id       VARCHAR(64) NOT NULL PRIMARY KEY,
    idem_key `+text+` NOT NULL, -- the stored idempotency key (idem.StoreKey)
    amount   BIGINT      NOT NULL,
    currency `+text+` NOT NULL,
    created  VARCHAR(64) NOT NULL
)`)
	if err != nil {
		return nil, fmt.Errorf("-ledger sql: creating %s: %w", ledgerTable, err)
	}
	return s.Transactional(nil), nil
}

// ledgerOf returns the SQL ledger of a store in transactional mode, or nil.
func ledgerOf(store idem.Store) *sqlLedger {
	s, ok := store.(*sqlstore.TxStore)
	if !ok {
		return nil
	}
	return &sqlLedger{db: s.DB(), dialect: s.Dialect()}
}

func (l *sqlLedger) ph(n int) string {
	if l.dialect == sqlstore.Postgres {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// add writes p in the transaction of the request r.
func (l *sqlLedger) add(r *http.Request, p payment) error {
	tx, ok := sqlstore.TxFromContext(r.Context())
	if !ok {
		return errors.New("no transaction: the request is not run by the transactional store")
	}
	key, _ := idem.KeyFromContext(r.Context())
	scope, _ := idem.ScopeFromContext(r.Context())
	_, err := tx.ExecContext(r.Context(), `INSERT INTO `+ledgerTable+` (id, idem_key, amount, currency, created) VALUES (`+
		l.ph(1)+`, `+l.ph(2)+`, `+l.ph(3)+`, `+l.ph(4)+`, `+l.ph(5)+`)`,
		p.ID, idem.StoreKey(scope, key), p.Amount, p.Currency, p.Created)
	return err
}

// list returns the committed payments, oldest first.
func (l *sqlLedger) list(ctx context.Context) ([]payment, error) {
	rows, err := l.db.QueryContext(ctx, `SELECT id, amount, currency, created FROM `+ledgerTable+` ORDER BY created, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []payment{}
	for rows.Next() {
		var p payment
		if err := rows.Scan(&p.ID, &p.Amount, &p.Currency, &p.Created); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
