package devserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
)

// GCS is a local Google Cloud Storage server: fake-gcs-server, keeping its
// objects in memory. It speaks GCS's JSON API, which the Go client and so
// gs:// buckets use, with its listing's prefixes, page tokens and
// startOffset. A client finds it through STORAGE_EMULATOR_HOST=Host.
type GCS struct {
	Host string // 127.0.0.1:<port>
	*server
}

// FakeGCSBinary returns the GCS server's path: env DCD_FAKE_GCS, else
// the setup's folder's bin/fake-gcs-server (toolcache; scripts/setup.sh installs it).
func FakeGCSBinary() (string, error) {
	return installed("DCD_FAKE_GCS", "fake-gcs-server", "fake-gcs-server")
}

// StartGCS starts the GCS server bin on a free local port, its output
// going to log, and waits until it listens (30 s at most).
func StartGCS(bin string, log io.Writer) (*GCS, error) {
	srv, err := listening("gcs server", bin, log, func(addr string) []string {
		host, port, _ := net.SplitHostPort(addr)
		return []string{"-scheme", "http", "-host", host, "-port", port, "-backend", "memory",
			"-public-host", addr, "-external-url", "http://" + addr, "-log-level", "warn"}
	})
	if err != nil {
		return nil, err
	}
	return &GCS{Host: srv.addr, server: srv}, nil
}

// Bucket creates a bucket and returns its gs:// URL (gocloud cannot
// create buckets; the JSON API's insert can, with no credentials here).
func (s *GCS) Bucket(ctx context.Context, name string) (string, error) {
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.Host+"/storage/v1/b?project=dcd-test", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("devserver: create bucket %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return "", fmt.Errorf("devserver: create bucket %s: %s: %s", name, resp.Status, msg)
	}
	return "gs://" + name, nil
}
