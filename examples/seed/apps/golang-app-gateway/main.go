// golang-app-gateway: the business gateway of the seed's demo.
//
//	GET  /                 calls springboot-app (v1 or v2, as the mesh routes it) and frames its answer
//	POST /anticaptcha/{id} forwards the multipart upload to python-app-anticaptcha unchanged
//
// Every outgoing request carries the incoming request's trace headers.
package main

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"
)

const app = "golang-app-gateway"

type gateway struct {
	springboot  string // base URL of springboot-app-svc
	anticaptcha string // base URL of python-app-anticaptcha-svc
	client      *http.Client
}

func main() {
	g := &gateway{
		springboot:  strings.TrimSuffix(envOr("SPRINGBOOT_URL", "http://springboot-app-svc:8080"), "/"),
		anticaptcha: strings.TrimSuffix(envOr("ANTICAPTCHA_URL", "http://python-app-anticaptcha-svc:8080"), "/"),
		// Longer than the seed's 7s delay injection, so the gateway waits it out as in the seed.
		client: &http.Client{Timeout: 30 * time.Second},
	}
	addr := envOr("LISTEN_ADDR", ":8080")
	mux := http.NewServeMux()
	mux.HandleFunc("/anticaptcha/", g.anticaptchaRoute)
	mux.HandleFunc("/", g.root)
	log.Printf("%s listening on %s, springboot %s, anticaptcha %s", app, addr, g.springboot, g.anticaptcha)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// forward sends req with the trace headers of the incoming request and returns the status, the
// content type and the body of the answer.
func (g *gateway) forward(req *http.Request, trace map[string]string) (int, string, []byte, error) {
	for k, v := range trace {
		req.Header.Set(k, v)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), body, err
}

// root answers `Gateway get from upstream: [\n\n <springboot's line>\n\n]\n\n`. springboot-app
// ends its line with a newline, which the frame drops: the seed's curl shows the visible text
// with content-length 68 (V1) and 171 (V2), two more than the visible characters.
func (g *gateway) root(w http.ResponseWriter, r *http.Request) {
	trace := seenTrace(r)
	logRequest(app, r, trace)
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, g.springboot+"/", nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	status, _, body, err := g.forward(req, trace)
	if err != nil {
		log.Printf("springboot-app: %v", err)
		http.Error(w, "upstream springboot-app failed: "+err.Error(), http.StatusBadGateway)
		return
	}
	if status != http.StatusOK {
		// Pass the upstream's failure through (e.g. the mesh's injected 500 or a 503).
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		w.Write(body)
		return
	}
	var out bytes.Buffer
	out.WriteString("Gateway get from upstream: [\n\n ")
	out.Write(bytes.TrimSuffix(body, []byte("\n")))
	out.WriteString("\n\n]\n\n")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(out.Bytes())
}

// anticaptchaRoute forwards POST /anticaptcha/{id} (multipart, part `img`) to the anticaptcha
// service and answers with its status, content type and body.
func (g *gateway) anticaptchaRoute(w http.ResponseWriter, r *http.Request) {
	trace := seenTrace(r)
	logRequest(app, r, trace)
	id := strings.TrimPrefix(r.URL.Path, "/anticaptcha/")
	if id == "" || strings.Contains(id, "/") {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	url := g.anticaptcha + "/anticaptcha/" + id
	if r.URL.RawQuery != "" {
		url += "?" + r.URL.RawQuery
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, url, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.ContentLength = r.ContentLength
	for _, h := range []string{"Content-Type", "Accept"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	status, ctype, body, err := g.forward(req, trace)
	if err != nil {
		log.Printf("python-app-anticaptcha: %v", err)
		http.Error(w, "upstream python-app-anticaptcha failed: "+err.Error(), http.StatusBadGateway)
		return
	}
	if ctype != "" {
		w.Header().Set("Content-Type", ctype)
	}
	w.WriteHeader(status)
	w.Write(body)
}
