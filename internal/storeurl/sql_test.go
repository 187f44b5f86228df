package storeurl

import (
	"strings"
	"testing"
)

// -store mysql://… becomes the driver's configuration: user and password
// percent-decoded, port 3306 by default, interpolateParams on unless the
// URL says otherwise, the URL's parameters passed on.
func TestMySQLStoreURL(t *testing.T) {
	cfg, err := mysqlConfig("mysql://app:p%40ss%3Aw%2Frd@db.internal/payments")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "app" || cfg.Passwd != "p@ss:w/rd" || cfg.Net != "tcp" || cfg.Addr != "db.internal:3306" || cfg.DBName != "payments" || !cfg.InterpolateParams {
		t.Fatalf("config %+v", cfg)
	}
	cfg, err = mysqlConfig("mysql://app@127.0.0.1:3307/db?interpolateParams=false&timeout=3s&clientFoundRows=true")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:3307" || cfg.Passwd != "" || cfg.InterpolateParams || cfg.Timeout.String() != "3s" || !cfg.ClientFoundRows {
		t.Fatalf("config %+v", cfg)
	}
}

// A bad -store mysql://… value is refused with an error that never
// quotes the password.
func TestMySQLStoreURLErrorsHidePassword(t *testing.T) {
	for _, spec := range []string{
		"mysql://u:s3cret@/db",
		"mysql://u:s3cret@host",
		"mysql://u:s3cret@host/",
		"mysql://u:s3cret@host/a/b",
		"mysql://u:s3cret%zz@host/db",
		"mysql://u:s3cret@host/db?interpolateParams=maybe",
		"mysql://u:s3cret@host/db?nosuchparam%zz=1",
	} {
		_, err := mysqlConfig(spec)
		if err == nil {
			t.Errorf("mysqlConfig(%q) accepted", spec)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("mysqlConfig(%q): error quotes the password: %v", spec, err)
		}
	}
}
