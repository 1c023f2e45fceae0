package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"dcd/internal/devserver"
)

// DefaultLatency is how long the remote part's store takes to answer a
// request: a same-region object store's first byte takes tens of
// milliseconds (S3's guidelines speak of 100-200 ms for small objects).
const DefaultLatency = 50 * time.Millisecond

// Remote measures Pass's 250k case (60k with Quick) on an object store: a
// real S3 server (versitygw) behind a proxy that holds each request for
// o.Latency before passing it on, as a store across a network answers.
// The bench writes the features to the server directly; the worker reads
// and writes through the proxy. Beside the same case on file:// (Pass),
// the difference is the store's latency the pass did not hide.
func Remote(ctx context.Context, o Options) ([]Result, error) {
	latency := o.Latency
	if latency <= 0 {
		latency = DefaultLatency
	}
	bin, err := devserver.VersityGWBinary()
	if err != nil {
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	dir := filepath.Join(o.Dir, "s3")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	logf, err := os.Create(filepath.Join(o.Dir, "versitygw.log"))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer logf.Close()
	s3, err := devserver.StartS3(bin, dir, logf)
	if err != nil {
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	defer s3.Stop()
	// This process's bucket reads its keys from the environment, as the
	// worker, which inherits it, does.
	for _, kv := range devserver.S3Env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	const name = "bench"
	url, err := s3.Bucket(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	proxy, stop, err := delayProxy(s3.Endpoint, latency)
	if err != nil {
		return nil, err
	}
	defer stop()
	c, queries := passCase{rows: 250_000}, 1000
	if o.Quick {
		c.rows, queries = 60_000, 100
	}
	c.label = fmt.Sprintf("%dk_s3_%dms", c.rows/1000, latency.Milliseconds())
	o.logf("remote: pass %s through a proxy that delays each request %s", c.label, latency)
	return passes(ctx, o, url, devserver.S3URL(name, proxy), []passCase{c}, queries)
}

// delayProxy serves on a free local port, passing each request to target
// after latency; it returns its endpoint (http://host:port).
func delayProxy(target string, latency time.Duration) (endpoint string, stop func(), err error) {
	u, err := neturl.Parse(target)
	if err != nil {
		return "", nil, fmt.Errorf("bench: proxy: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("bench: proxy: %w", err)
	}
	forward := httputil.NewSingleHostReverseProxy(u)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
		forward.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	return "http://" + l.Addr().String(), func() { srv.Close() }, nil
}
