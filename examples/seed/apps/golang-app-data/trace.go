package main

import (
	"encoding/json"
	"net/http"
	"os"
)

// traceHeaders are the headers the seed asks every service to copy from its incoming request to
// each outgoing one, so the mesh's spans join into one trace.
var traceHeaders = []string{
	"x-request-id",
	"x-b3-traceid",
	"x-b3-spanid",
	"x-b3-parentspanid",
	"x-b3-sampled",
	"x-b3-flags",
	"x-ot-span-context",
	"b3",
}

// seenTrace returns the trace headers present on r.
func seenTrace(r *http.Request) map[string]string {
	seen := map[string]string{}
	for _, name := range traceHeaders {
		if v := r.Header.Get(name); v != "" {
			seen[name] = v
		}
	}
	return seen
}

// logRequest writes one JSON line to stdout: which app saw which trace headers on which request.
func logRequest(app string, r *http.Request, seen map[string]string) {
	line, _ := json.Marshal(struct {
		App    string            `json:"app"`
		Method string            `json:"method"`
		Path   string            `json:"path"`
		Trace  map[string]string `json:"trace"`
	}{app, r.Method, r.URL.Path, seen})
	os.Stdout.Write(append(line, '\n'))
}
