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
	s3, err := startRemote(ctx, o, "bench")
	if err != nil {
		return nil, err
	}
	defer s3.stop()
	c, queries := passCase{rows: 250_000}, 1000
	if o.Quick {
		c.rows, queries = 60_000, 100
	}
	c.label = fmt.Sprintf("%dk_s3_%s", c.rows/1000, s3.latencyName())
	o.logf("remote: pass %s through a proxy that delays each request %s", c.label, s3.latency)
	return passes(ctx, o, s3.direct, s3.proxied, []passCase{c}, queries)
}

// remote is an S3 server (versitygw) with a bucket, and a proxy in front of
// it that holds each request for latency.
type remote struct {
	s3      *devserver.S3
	latency time.Duration
	proxy   string // the proxy's endpoint
	// direct and proxied are the bucket's URL on the server and through
	// the proxy.
	direct, proxied string
	stopProxy       func()
}

// startRemote starts a server of its own under o.Dir, creates the bucket
// name and the proxy, delaying o.Latency or DefaultLatency.
func startRemote(ctx context.Context, o Options, name string) (*remote, error) {
	r := &remote{latency: o.Latency}
	if r.latency <= 0 {
		r.latency = DefaultLatency
	}
	bin, err := devserver.VersityGWBinary()
	if err != nil {
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	dir := filepath.Join(o.Dir, "s3-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(o.Dir, "versitygw.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer logf.Close() // the server has its own descriptor
	if r.s3, err = devserver.StartS3(bin, dir, logf); err != nil {
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	// This process's buckets read their keys from the environment, as
	// the worker, which inherits it, does.
	for _, kv := range devserver.S3Env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	if r.direct, err = r.s3.Bucket(ctx, name); err != nil {
		r.s3.Stop()
		return nil, fmt.Errorf("bench: remote: %w", err)
	}
	if r.proxy, r.stopProxy, err = delayProxy(r.s3.Endpoint, r.latency); err != nil {
		r.s3.Stop()
		return nil, err
	}
	r.proxied = devserver.S3URL(name, r.proxy)
	return r, nil
}

// bucket creates another bucket on the server and returns its URL through
// the proxy.
func (r *remote) bucket(ctx context.Context, name string) (string, error) {
	if _, err := r.s3.Bucket(ctx, name); err != nil {
		return "", fmt.Errorf("bench: remote: %w", err)
	}
	return devserver.S3URL(name, r.proxy), nil
}

// latencyName is the latency as results name it: "50ms".
func (r *remote) latencyName() string { return fmt.Sprintf("%dms", r.latency.Milliseconds()) }

func (r *remote) stop() {
	r.stopProxy()
	r.s3.Stop()
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
