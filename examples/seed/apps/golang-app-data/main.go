// golang-app-data: the data tier of the seed's demo. GET / answers the JSON file the
// golang-app-data-cm ConfigMap mounts at /app/config/config-data.json, byte for byte (springboot-app
// v2 wraps it verbatim). GET /env reports the ConfigMap values injected as environment
// (CONFIG_VALUE1, CONFIG_VALUE2) and the mysecret Secret's username, from its mounted file and
// from the environment.
//
// The file is read again on every request: the kubelet updates a ConfigMap volume by writing a new
// timestamped directory and atomically re-pointing the `..data` symlink, so the path stays valid
// and the next read sees the new content (the seed's 热更新 step) without watching anything.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sync"
)

const app = "golang-app-data"

type server struct {
	configFile string
	secretDir  string

	mu   sync.Mutex
	last []byte // content of the previous read, to log when the ConfigMap changed
}

func main() {
	s := &server{
		configFile: envOr("CONFIG_FILE", "/app/config/config-data.json"),
		secretDir:  envOr("SECRET_DIR", "/etc/foo"),
	}
	addr := envOr("LISTEN_ADDR", ":8080")
	mux := http.NewServeMux()
	mux.HandleFunc("/env", s.env)
	mux.HandleFunc("/", s.data)
	log.Printf("%s listening on %s, config %s, secrets %s", app, addr, s.configFile, s.secretDir)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func (s *server) data(w http.ResponseWriter, r *http.Request) {
	logRequest(app, r, seenTrace(r))
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	body, err := os.ReadFile(s.configFile)
	if err != nil {
		log.Printf("reading %s: %v", s.configFile, err)
		http.Error(w, "config file unreadable: "+err.Error(), http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	if s.last != nil && string(s.last) != string(body) {
		log.Printf("%s changed (%d -> %d bytes)", s.configFile, len(s.last), len(body))
	}
	s.last = body
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// envReport is GET /env's answer. Absent values are null, so a Pod without the Secret mounted
// says so instead of answering an empty string.
type envReport struct {
	ConfigValue1   *string         `json:"CONFIG_VALUE1"`
	ConfigValue2   *string         `json:"CONFIG_VALUE2"`
	Username       *string         `json:"USERNAME"`
	SecretUsername *string         `json:"secret_username"`
	Config         json.RawMessage `json:"config"`
}

func (s *server) env(w http.ResponseWriter, r *http.Request) {
	logRequest(app, r, seenTrace(r))
	rep := envReport{
		ConfigValue1:   lookup("CONFIG_VALUE1"),
		ConfigValue2:   lookup("CONFIG_VALUE2"),
		Username:       lookup("USERNAME"),
		SecretUsername: readOptional(filepath.Join(s.secretDir, "username")),
		Config:         json.RawMessage("null"),
	}
	if body, err := os.ReadFile(s.configFile); err == nil && json.Valid(body) {
		rep.Config = body
	}
	w.Header().Set("Content-Type", "application/json")
	out, _ := json.MarshalIndent(rep, "", "  ")
	w.Write(append(out, '\n'))
}

func lookup(name string) *string {
	if v, ok := os.LookupEnv(name); ok {
		return &v
	}
	return nil
}

func readOptional(path string) *string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	v := string(b)
	return &v
}
