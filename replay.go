package idem

// What the middleware answers of its own: replays of stored responses and
// RFC 9457 problems (409 with Retry-After, 422, 503, 400, 413).

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// ProblemTypeBase is the prefix of the "type" member of every problem
// response the middleware sends. Each type's anchor is documented in the
// README's "Problem types" table.
const ProblemTypeBase = "https://github.com/idemgo/idem#problem-"

// problem is an RFC 9457 problem details object. Every answer the
// middleware gives of its own is one; none ever carries internal error text.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// OriginalStatus is set on response-not-replayable problems: the status
	// of the response the first request got.
	OriginalStatus int `json:"original_status,omitempty"`
}

func newProblem(slug string, status int, title, detail string) *problem {
	return &problem{Type: ProblemTypeBase + slug, Title: title, Status: status, Detail: detail}
}

// problems are the answers of one middleware that name its key header,
// encoded once when it is built, so that the common answers (409, 422, 503)
// cost no encoding per request.
type problems struct {
	keyMissing, keyInUse, keyReused, storeUnavailable, notRecorded rendered
	keyInvalid                                                     map[keyError]rendered
	header                                                         string
	maxKeyLen                                                      int
}

func newProblems(header string, maxKeyLen int) *problems {
	p := &problems{header: header, maxKeyLen: maxKeyLen}
	p.keyMissing = mustRender(newProblem("key-missing", http.StatusBadRequest, header+" required",
		"This endpoint requires an "+header+" header; send a unique key with each new request and repeat it on retries."))
	p.keyInUse = mustRender(newProblem("key-in-use", http.StatusConflict, "Request in progress",
		"A request with this "+header+" is still being processed. Retry after the number of seconds in Retry-After."))
	p.keyReused = mustRender(newProblem("key-reused", http.StatusUnprocessableEntity, header+" reused",
		"This "+header+" was already used for a different request: its method, path, query or body differ (or a header this endpoint compares). Use a new key for a new request."))
	p.storeUnavailable = mustRender(newProblem("store-unavailable", http.StatusServiceUnavailable, "Idempotency store unavailable",
		"The request was not processed because its "+header+" could not be checked. Retry with the same key after the number of seconds in Retry-After."))
	p.notRecorded = mustRender(newProblem("response-not-recorded", http.StatusServiceUnavailable, "Response not recorded",
		"The request may have been processed, but its response could not be recorded. Retry with the same "+header+" after the number of seconds in Retry-After to learn the outcome."))
	p.keyInvalid = make(map[keyError]rendered, len(keyErrors))
	for _, e := range keyErrors {
		p.keyInvalid[e] = p.renderKeyInvalid(e)
	}
	return p
}

// key answers a refused key; err's text was written for clients (see
// keyError).
func (p *problems) key(err error) rendered {
	if err == errKeyMissing {
		return p.keyMissing
	}
	if e, ok := err.(keyError); ok {
		if r, ok := p.keyInvalid[e]; ok {
			return r
		}
	}
	return p.renderKeyInvalid(err)
}

func (p *problems) renderKeyInvalid(err error) rendered {
	detail := err.Error()
	if err == errKeyTooLong {
		detail = "The " + DefaultHeader + " is longer than " + strconv.Itoa(p.maxKeyLen) + " characters, the limit of this endpoint"
	}
	detail = strings.ReplaceAll(detail, DefaultHeader, p.header)
	return mustRender(newProblem("key-invalid", http.StatusBadRequest, "Invalid "+p.header, detail+"."))
}

// Problems that do not name the key header.
var (
	probBodyUnreadable = mustRender(newProblem("body-unreadable", http.StatusBadRequest, "Request body unreadable",
		"The request body could not be read completely."))
)

type rendered struct {
	status int
	body   []byte
	length []string // Content-Length
	typ    string   // the problem type, for Event.Problem
	detail string   // the detail, for Event.Reason
}

func mustRender(p *problem) rendered {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return rendered{status: p.Status, body: b, length: []string{strconv.Itoa(len(b))}, typ: p.Type, detail: p.Detail}
}

// Header values shared by every problem response; net/http never changes
// a value slice in place.
var (
	problemType = []string{"application/problem+json"}
	noStore     = []string{"no-store"}
)

func probBodyTooLarge(limit int64) rendered {
	return mustRender(newProblem("body-too-large", http.StatusRequestEntityTooLarge, "Request body too large",
		"Requests with an idempotency key may carry at most "+strconv.FormatInt(limit, 10)+" bytes of body on this endpoint."))
}

func probNotReplayable(original int) rendered {
	p := newProblem("response-not-replayable", http.StatusConflict, "Response cannot be replayed",
		"A request with this key has already been processed, but its response was streamed or too large to keep, so it cannot be sent again. The request will not be processed again with this key.")
	p.OriginalStatus = original
	return mustRender(p)
}

// writeProblem sends p. retryAfter, in seconds, is sent as Retry-After when
// positive.
func writeProblem(w http.ResponseWriter, p rendered, retryAfter int) {
	h := w.Header()
	h["Content-Type"] = problemType
	h["Content-Length"] = p.length
	h["Cache-Control"] = noStore
	if retryAfter > 0 {
		h["Retry-After"] = []string{strconv.Itoa(retryAfter)}
	}
	w.WriteHeader(p.status)
	w.Write(p.body)
}

// answerExisting answers a request whose key is already taken.
func (m *Middleware) answerExisting(w http.ResponseWriter, rec *Record, fp string, ev Event) {
	switch ev.Outcome = decide(rec, fp); ev.Outcome {
	case OutcomeMismatch:
		m.answer(w, m.cfg.probs.keyReused, 0, ev)
	case OutcomeConflict:
		m.answer(w, m.cfg.probs.keyInUse, ceilSeconds(rec.LeaseLeft), ev)
	default:
		resp, err := DecodeResponse(rec.Result)
		if err != nil {
			ev.Outcome, ev.Err = OutcomeStoreError, err
			m.answer(w, m.cfg.probs.storeUnavailable, m.cfg.storeRetryAfter, ev)
			return
		}
		if resp.BodyOmitted {
			ev.Outcome = OutcomeNotReplayable
			m.answer(w, probNotReplayable(resp.Status), 0, ev)
			return
		}
		ev.Outcome, ev.Status = OutcomeReplayed, resp.Status
		m.cfg.report(ev)
		writeReplay(w, resp)
	}
}

// answer reports ev and sends the problem p.
func (m *Middleware) answer(w http.ResponseWriter, p rendered, retryAfter int, ev Event) {
	ev.Status, ev.Problem = p.status, p.typ
	if ev.Outcome == OutcomeRejected {
		ev.Reason = p.detail
	}
	m.cfg.report(ev)
	writeProblem(w, p, retryAfter)
}
