package idem_test

import (
	"net/http"
	"testing"

	"github.com/idemgo/idem"
)

type goldenCase struct {
	name string
	f    idem.FingerprintFunc
	r    *http.Request
	body string
	want string
}

func goldenCases() []goldenCase {
	hdrs := idem.FingerprintHeaders("X-Api-Version", "X-Account")
	return []goldenCase{
		{"default", idem.Fingerprint, fpRequest("POST", "/payments", "a=1", nil), `{"amount":1}`, "6f79265c5f7431d5019e44475f28e4ba10fb3fc6c3e9a7010061c0a180354908"},
		{"empty", idem.Fingerprint, fpRequest("PATCH", "/", "", nil), "", "c7fd3846cb35110101710a72d1890ce4dd870707358b2114991d41c65e24bd0f"},
		{"headers absent", hdrs, fpRequest("POST", "/p", "", http.Header{}), "x", "b54210d4c69d35b6699c10d526a89dbff2c8f57063a99b3dd6c82b82803f297e"},
		{"headers set", hdrs, fpRequest("POST", "/p", "", http.Header{"X-Api-Version": {"2"}, "X-Account": {"a", ""}}), "x", "4fb375515538012f3f9960c4e8be18d53e43f9d1c68651fe438a056583827445"},
		{"headers empty", hdrs, fpRequest("POST", "/p", "", http.Header{"X-Api-Version": {""}}), "x", "5a46bc39ca83f645b7e64e7eeafd554cce3df3e381db5c847314e9bf54ba226b"},
		{"names in another order", idem.FingerprintHeaders("x-account", "X-API-VERSION"), fpRequest("POST", "/p", "", http.Header{"X-Api-Version": {"2"}, "X-Account": {"a", ""}}), "x", "4fb375515538012f3f9960c4e8be18d53e43f9d1c68651fe438a056583827445"},
		{"canonical JSON", idem.CanonicalJSON(), fpRequest("POST", "/p", "", nil), ` {"b":[1, 2],"a":"x"} `, "4e90e626a93e2c2b6ef8407fcd36ff24cc9d7db6c4e1def38c0d7bddb84682e3"},
		{"canonical JSON literals", idem.CanonicalJSON(), fpRequest("POST", "/p", "", nil), `{"n":null, "t":true, "f":false, "e":[], "o":{}, "s":"\u00e9"}`, "93c8d3f2fe076e420469fb5909ed9201e6097db36e8cdc7072a91959c2bd938d"},
	}
}

// Fingerprints are stored with every record, so a release must compute
// the same fingerprint for the same request as the release before it, or
// every retry across an upgrade would be refused as a reused key. These
// values pin the encoding (each field framed by its length, headers by
// name, presence and count; header names in sorted order, whatever order
// they are given in).
func TestFingerprintStableAcrossReleases(t *testing.T) {
	for _, c := range goldenCases() {
		if got := c.f(c.r, []byte(c.body)); got != c.want {
			t.Errorf("%s: fingerprint %s, want %s as in earlier releases", c.name, got, c.want)
		}
	}
}
