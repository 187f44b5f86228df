package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/idemgo/idem"
)

// The headers a sender sets on every attempt of a delivery. The delivery id
// is the same on every attempt; the timestamp and the signature are new on
// each.
const (
	headerDelivery  = "X-Delivery-Id"
	headerTimestamp = "X-Signature-Timestamp"
	headerSignature = "X-Signature"
)

// maxBody bounds a delivery's body, for the signature check and for idem.
const maxBody = 256 << 10

// tolerance is how far a delivery's timestamp may be from the receiver's
// clock: a signed request older than that is refused, so that a captured one
// cannot be replayed long after.
const tolerance = 5 * time.Minute

// processFunc handles one verified delivery of sender, once per delivery
// id. What it returns is the answer every attempt of the delivery gets.
type processFunc func(ctx context.Context, sender string, event []byte) (status int, answer []byte)

// newReceiver serves POST /webhooks/{sender}. Each sender signs its
// deliveries with its own secret:
//
//	X-Signature: hex HMAC-SHA256(secret, timestamp + "." + body)
//
// A delivery is verified first, so that a forged request never claims a
// delivery id. Then idem runs process at most once per sender and delivery
// id:
//
//   - the key is the X-Delivery-Id header, required (problems name it);
//   - the scope is the sender, taken from the path after its signature was
//     checked, so two senders' ids never meet;
//   - the fingerprint covers the method, the path and the JSON body but not
//     its top-level "attempt" member, which the sender counts up on every
//     attempt (idem.CanonicalJSONIgnoring). Headers count only when named,
//     so the timestamp and signature, new on every attempt too, never make a
//     retry look like another request;
//   - WithWait lets an attempt that arrives while the first still runs wait
//     for its answer instead of a 409, which a sender would count as a
//     failed attempt.
func newReceiver(store idem.Store, secrets map[string][]byte, process processFunc, opts ...idem.Option) (http.Handler, error) {
	mw, err := idem.NewMiddleware(store, append([]idem.Option{
		idem.WithHeader(headerDelivery),
		idem.WithRequiredKey(),
		idem.WithScope(func(r *http.Request) string { return r.PathValue("sender") }),
		idem.WithFingerprint(idem.CanonicalJSONIgnoring([]string{"attempt"})),
		idem.WithMaxBodySize(maxBody),
		idem.WithWait(10 * time.Second),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	handle := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			writeProblem(w, http.StatusBadRequest, "Body unreadable", "The delivery's body could not be read.")
			return
		}
		status, answer := process(r.Context(), r.PathValue("sender"), body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(answer)
	}))
	mux := http.NewServeMux()
	mux.Handle("POST /webhooks/{sender}", verify(secrets, handle))
	return mux, nil
}

// verify passes on a delivery whose sender is known and whose signature and
// timestamp are valid, with its body intact; others get 401.
func verify(secrets map[string][]byte, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret, ok := secrets[r.PathValue("sender")]
		if !ok {
			writeProblem(w, http.StatusNotFound, "Unknown sender", "No sender of that name is configured.")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeProblem(w, http.StatusRequestEntityTooLarge, "Body too large", "The delivery's body is over "+strconv.Itoa(maxBody)+" bytes.")
				return
			}
			writeProblem(w, http.StatusBadRequest, "Body unreadable", "The delivery's body could not be read.")
			return
		}
		if detail := signatureProblem(secret, r.Header.Get(headerTimestamp), r.Header.Get(headerSignature), body, time.Now()); detail != "" {
			writeProblem(w, http.StatusUnauthorized, "Bad signature", detail)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// sign returns the X-Signature of body sent at timestamp ts.
func sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// signatureProblem returns the detail of a client-safe problem when sig is
// not the signature of body at ts, or ts is not within tolerance of now,
// and "" when both are good.
func signatureProblem(secret []byte, ts, sig string, body []byte, now time.Time) string {
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "The " + headerTimestamp + " header is missing or not Unix seconds."
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return "The " + headerTimestamp + " is too far from the receiver's clock."
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mustHex(sign(secret, ts, body))) {
		return "The " + headerSignature + " does not match the body."
	}
	return ""
}

func mustHex(s string) []byte {
	b, _ := hex.DecodeString(s) // s comes from hex.EncodeToString
	return b
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"title": title, "status": status, "detail": detail})
}
