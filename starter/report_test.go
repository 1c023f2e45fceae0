package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeReport(t *testing.T) (dir, url string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "runs", "r1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runs", "r1", "report.html"), []byte("<!doctype html><title>r1</title>"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, "file://" + dir + "?create_dir=1"
}

// With file:// storage, `starter report` prints the report's path; a pass
// without one is an error that says so.
func TestReportPrintsPath(t *testing.T) {
	dir, url := writeReport(t)
	// (A server that answers is asked whether the report is the latest
	// run's: none answers here.)
	code, stdout, stderr, dialed := run(t, "-address", "127.0.0.1:1", "report", "-storage", url, "r1")
	if code != 0 || strings.TrimSpace(stdout) != filepath.Join(dir, "runs", "r1", "report.html") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if dialed != nil {
		t.Error("report dialed Temporal; it only needs storage")
	}
	code, _, stderr, _ = run(t, "report", "-storage", url, "nope")
	if code != 1 || !strings.Contains(stderr, "no report for pass nope") {
		t.Errorf("missing report: exit %d, stderr %q", code, stderr)
	}
	if code, _, _, _ := run(t, "report"); code != 2 {
		t.Errorf("no pass id: exit %d, want 2", code)
	}
}

// -serve serves the report on localhost until interrupted.
func TestReportServes(t *testing.T) {
	_, url := writeReport(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- realMain(ctx, []string{"report", "-serve", "-storage", url, "r1"}, &out, &errOut, false)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasPrefix(out.String(), "http://127.0.0.1:") {
		if time.Now().After(deadline) {
			t.Fatalf("no URL printed; stderr %q", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "<!doctype html><title>r1</title>" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("GET: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after interrupt; stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still serving after interrupt")
	}
}
