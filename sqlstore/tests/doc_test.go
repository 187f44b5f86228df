// Package sqlstore_test holds the tests of sqlstore against real PostgreSQL
// and SQLite databases. It is a module of its own so that the drivers it
// tests with never reach the module graph of sqlstore's users, who bring
// their own.
package sqlstore_test
