// Package sqlstore is an idem.Store on a SQL database through database/sql:
// PostgreSQL and SQLite.
package sqlstore
