package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/api/googleapi"
)

// fakeS3 serves GetObject for path-style URLs of one bucket, answering each
// key with its own name after delay, which keeps the reads of many
// goroutines in flight at once. It counts the connections it accepts.
// (workflows' tests run a real S3 server, versitygw, which closes every
// connection after one response, so it cannot show reuse.) With tls, it
// serves HTTPS under a certificate of its own, named by AWS_CA_BUNDLE as
// a store with a private CA is.
func fakeS3(t testing.TB, bucket string, tls bool, delay time.Duration) (url string, conns *atomic.Int64) {
	conns = new(atomic.Int64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := strings.CutPrefix(r.URL.Path, "/"+bucket+"/")
		if r.Method != http.MethodGet || !ok {
			http.Error(w, "fakeS3 serves GET /"+bucket+"/<key> only, not "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
			return
		}
		time.Sleep(delay)
		w.Header().Set("Content-Length", strconv.Itoa(len(key)))
		w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
		w.Write([]byte(key))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if tls {
		srv.StartTLS()
		bundle := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AWS_CA_BUNDLE", bundle)
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "fake-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	t.Setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
	t.Setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
	return "s3://" + bucket + "?endpoint=" + srv.URL + "&use_path_style=true&region=us-east-1", conns
}

// checkReuse runs eight bursts of 64 reads at once, read(i) being the
// i-th, and fails if they opened (by conns) more connections than two
// bursts' worth: connections must outlive a burst, for the next to reuse.
// The SDKs' own clients keep 10 idle and close the rest, so each burst
// after the first would dial (and on a real store, TLS-handshake) anew.
func checkReuse(t *testing.T, conns *atomic.Int64, read func(i int) error) {
	t.Helper()
	const readers, bursts = 64, 8
	before := conns.Load()
	for burst := range bursts {
		var g errgroup.Group
		for r := range readers {
			g.Go(func() error { return read(burst*readers + r) })
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	// A read that finds every connection busy dials a new one, and may be
	// served by one that comes back first: the dialled one then stays idle.
	// So connections can outnumber the readers, but only by such races.
	if n := conns.Load() - before; n > 2*readers {
		t.Errorf("%d bursts of %d reads at once opened %d connections; want at most %d: connections were closed after a burst instead of kept",
			bursts, readers, n, 2*readers)
	}
}

func TestS3ReusesConnections(t *testing.T) {
	ctx := context.Background()
	url, conns := fakeS3(t, "pool", false, 2*time.Millisecond)
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkReuse(t, conns, func(i int) error {
		key := "img/" + strconv.Itoa(i) + ".png"
		data, err := ReadAll(ctx, b, key)
		if err == nil && string(data) != key {
			t.Errorf("read %q: got %q", key, data)
		}
		return err
	})
}

// Rows that each name the bucket with another prefix= share one client
// and its connections: a client each would dial anew for every prefix,
// and keep each connection idle for 90 s after.
func TestS3PrefixesShareAClient(t *testing.T) {
	ctx := context.Background()
	url, conns := fakeS3(t, "pool", false, 0)
	var bs Buckets
	defer bs.Close()
	const prefixes = 50
	for i := range prefixes {
		b, err := bs.Open(ctx, fmt.Sprintf("%s&prefix=row%d/", url, i))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("row%d/x.png", i)
		if data, err := ReadAll(ctx, b, "x.png"); err != nil || string(data) != want {
			t.Fatalf("prefix row%d/: read x.png = %q, %v; want the object %s", i, data, err, want)
		}
	}
	if n := conns.Load(); n > 2 {
		t.Errorf("%d reads, one a prefix, one after the other, opened %d connections; want them to share one", prefixes, n)
	}
	// The bucket without prefix= still reads: the prefixes' shared base
	// is not the one handed out for its URL.
	b, err := bs.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if data, err := ReadAll(ctx, b, "row0/x.png"); err != nil || string(data) != "row0/x.png" {
		t.Errorf("the bucket without prefix=, after its prefixes: %q, %v", data, err)
	}
	if err := bs.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// A store whose certificate a private CA signed is reached through
// AWS_CA_BUNDLE, as with the SDK's own client.
func TestS3CABundle(t *testing.T) {
	ctx := context.Background()
	url, _ := fakeS3(t, "pool", true, 0)
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if data, err := ReadAll(ctx, b, "x.png"); err != nil || string(data) != "x.png" {
		t.Errorf("read over HTTPS with AWS_CA_BUNDLE: %q, %v", data, err)
	}
}

// openS3 takes s3blob's query options and rejects bad ones by name.
func TestOpenS3Options(t *testing.T) {
	ctx := context.Background()
	url, _ := fakeS3(t, "pool", false, 0)
	for _, opt := range []string{"ssetype=AES256", "kmskeyid=key-1", "accelerate=false", "disable_https=true", "s3ForcePathStyle=true"} {
		b, err := Open(ctx, url+"&"+opt)
		if err != nil {
			t.Errorf("option %s: %v", opt, err)
			continue
		}
		if data, err := ReadAll(ctx, b, "x.png"); err != nil || string(data) != "x.png" {
			t.Errorf("option %s: read x.png = %q, %v", opt, data, err)
		}
		b.Close()
	}
	for opt, want := range map[string]string{
		"ssetype=rot13":    `"ssetype"`,
		"accelerate=maybe": `"accelerate"`,
		"bogus=1":          `"bogus"`,
	} {
		if _, err := Open(ctx, url+"&"+opt); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("option %s: error %v, want one naming %s", opt, err, want)
		}
	}
	// prefix= keeps the bucket's objects under a folder, as gocloud's
	// other drivers do; a folder in the URL's path would be dropped.
	b, err := Open(ctx, url+"&prefix=dcd/")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if data, err := ReadAll(ctx, b, "x.png"); err != nil || string(data) != "dcd/x.png" {
		t.Errorf("prefix=dcd/: read x.png = %q, %v; want dcd/x.png", data, err)
	}
	if _, err := Open(ctx, strings.Replace(url, "s3://pool?", "s3://pool/dcd?", 1)); err == nil || !strings.Contains(err.Error(), "prefix=dcd/") {
		t.Errorf("s3://pool/dcd: %v, want an error that says to write prefix=dcd/", err)
	}
}

// BenchmarkS3Get reads a small object through an s3:// bucket (gocloud over
// the AWS SDK) and, as the baseline, with a plain net/http GET of the same
// path, both from a fake S3 in this process, 64 reads at once. It reports
// the process's CPU per read: both sides pay the server's share, so the
// difference is the SDK's client (request signing, middleware).
func BenchmarkS3Get(b *testing.B) {
	ctx := context.Background()
	rawURL, _ := fakeS3(b, "pool", false, 0)
	u, err := neturl.Parse(rawURL)
	if err != nil {
		b.Fatal(err)
	}
	endpoint := u.Query().Get("endpoint")
	bk, err := Open(ctx, rawURL)
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: maxIdlePerHost}}
	for _, side := range []struct {
		name string
		read func() error
	}{
		{"gocloud", func() error {
			_, err := ReadAll(ctx, bk, "img/1.png")
			return err
		}},
		{"http", func() error {
			resp, err := client.Get(endpoint + "/pool/img/1.png")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.ReadAll(resp.Body)
			return err
		}},
	} {
		b.Run(side.name, func(b *testing.B) {
			start := cpuTime()
			b.SetParallelism(32) // 64 goroutines on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := side.read(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/read")
		})
	}
}

// cpuTime is the CPU this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// failingS3 answers every request with an S3 error of this HTTP status and
// code, and counts the requests. AWS_MAX_ATTEMPTS is 2: the SDK tries a
// request that may pass twice.
func failingS3(t *testing.T, status int, code string) (url string, requests *atomic.Int64) {
	requests = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, "<Error><Code>%s</Code><Message>from failingS3</Message></Error>", code)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "fake-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	t.Setenv("AWS_MAX_ATTEMPTS", "2")
	t.Setenv("AWS_PROFILE", "") // a developer's own would not matter here
	t.Setenv("AWS_ENDPOINT_URL", "")
	return "s3://pool?endpoint=" + srv.URL + "&use_path_style=true&region=us-east-1", requests
}

// A store that is throttling, failing or out of reach is worth trying
// again; one that says the object is missing or forbidden is not. S3's
// server errors have no gocloud code: their HTTP status tells. The S3
// client honours AWS_MAX_ATTEMPTS, which gocloud's retryer hid.
func TestTransient(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		status                 int
		code                   string
		transient, perm, creds bool
	}{
		{http.StatusServiceUnavailable, "ServiceUnavailable", true, false, false},
		{http.StatusInternalServerError, "InternalError", true, false, false},
		{http.StatusForbidden, "AccessDenied", false, true, false},
		{http.StatusNotFound, "NoSuchKey", false, true, false},
		{http.StatusNotImplemented, "NotImplemented", false, false, false},
		// Refusals gocloud gives no code: an object in Glacier, a key
		// that is not the account's, a range past the end.
		{http.StatusForbidden, "InvalidObjectState", false, true, false},
		{http.StatusForbidden, "InvalidAccessKeyId", false, true, true},
		{http.StatusForbidden, "SignatureDoesNotMatch", false, true, true},
		{http.StatusRequestedRangeNotSatisfiable, "InvalidRange", false, true, false},
		{http.StatusConflict, "OperationAborted", false, false, false},
		// 4xx that a retry outlasts: a request timed out or cut on its
		// way, credentials that expired.
		{http.StatusBadRequest, "RequestTimeout", true, false, false},
		{http.StatusBadRequest, "ExpiredToken", true, false, false},
	} {
		url, requests := failingS3(t, c.status, c.code)
		b, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ReadAll(ctx, b, "m.csv")
		b.Close()
		if err == nil || Transient(err) != c.transient || Permanent(err) != c.perm || CredentialsRefused(err) != c.creds {
			t.Errorf("S3 %d %s: Transient %v, Permanent %v, CredentialsRefused %v (%v); want %v, %v, %v",
				c.status, c.code, Transient(err), Permanent(err), CredentialsRefused(err), err, c.transient, c.perm, c.creds)
		}
		want := map[bool]int64{true: 2, false: 1}[c.transient]
		if c.code == "ExpiredToken" {
			want = 1 // the SDK leaves it to the next request's credentials
		}
		if requests.Load() != want {
			t.Errorf("S3 %d %s: %d requests, want %d (AWS_MAX_ATTEMPTS=2)", c.status, c.code, requests.Load(), want)
		}
	}

	// Nothing listens: a network error.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	b, err := Open(ctx, "s3://pool?endpoint=http://"+addr+"&use_path_style=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := ReadAll(ctx, b, "m.csv"); !Transient(err) {
		t.Errorf("unreachable store: %v, want it transient", err)
	}

	// Azure's and Google's server errors, as their SDKs return them.
	for _, err := range []error{
		fmt.Errorf("read: %w", &azcore.ResponseError{StatusCode: http.StatusServiceUnavailable, ErrorCode: "ServerBusy"}),
		fmt.Errorf("read: %w", &googleapi.Error{Code: http.StatusBadGateway}),
	} {
		if !Transient(err) {
			t.Errorf("%v: want it transient", err)
		}
	}
	// Failures to reach the store as its SDK returns them: a DNS timeout
	// may pass, a name that does not resolve or a certificate that does not
	// verify will not.
	dial := func(err error) error {
		return fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "https://s3.example/pool/m.csv", Err: &net.OpError{Op: "dial", Net: "tcp", Err: err}})
	}
	if err := dial(&net.DNSError{Err: "i/o timeout", Name: "s3.example", IsTimeout: true}); !Transient(err) {
		t.Errorf("%v: want it transient", err)
	}
	if err := fmt.Errorf("read: %w", &azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationPermissionMismatch"}); !Permanent(err) || CredentialsRefused(err) {
		t.Errorf("%v: want it permanent, the object's refusal", err)
	}
	// An expired SAS token, a key Azurite does not know (or an account's
	// firewall), credentials Google does not know.
	for _, err := range []error{
		fmt.Errorf("read: %w", &azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthenticationFailed"}),
		fmt.Errorf("read: %w", &azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationFailure"}),
		fmt.Errorf("read: %w", &googleapi.Error{Code: http.StatusUnauthorized}),
	} {
		if !Permanent(err) || !CredentialsRefused(err) {
			t.Errorf("%v: want it permanent, the credentials' refusal", err)
		}
	}
	// A server that closed the connection, reset it or sent HTTP/2's
	// GOAWAY may be back.
	for _, err := range []error{
		fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "https://s3.example/pool/m.csv", Err: io.EOF}),
		fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "https://s3.example/pool/m.csv", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}),
		fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "https://storage.example/pool/m.csv", Err: errors.New("http2: server sent GOAWAY and closed the connection")}),
	} {
		if !Transient(err) {
			t.Errorf("%v: want it transient", err)
		}
	}
	// An https:// endpoint that answers in plain HTTP: a setting to fix,
	// said at once.
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	bp, err := Open(ctx, "s3://pool?endpoint="+strings.Replace(plain.URL, "http:", "https:", 1)+"&use_path_style=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	defer bp.Close()
	if _, err := ReadAll(ctx, bp, "m.csv"); err == nil || Transient(err) {
		t.Errorf("an https endpoint speaking HTTP: %v, want it not transient", err)
	}
	for _, err := range []error{
		fmt.Errorf("read: %w", &azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationFailure"}),
		fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "ftp://s3.example/pool/m.csv", Err: errors.New(`unsupported protocol scheme "ftp"`)}),
		errors.New(`manifest "m.csv" line 3: empty uri`),
		dial(&net.DNSError{Err: "no such host", Name: "s3.exmaple", IsNotFound: true}),
		fmt.Errorf("read: %w", &neturl.Error{Op: "Get", URL: "https://s3.example/pool/m.csv", Err: &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}}),
	} {
		if Transient(err) {
			t.Errorf("%v: want it not transient", err)
		}
	}
}

// A response whose body ends before its Content-Length, a connection
// closed mid-object, is worth a retry: the SDK does not retry a body it
// has begun to read. Whole reads, range reads and a File's reads alike.
func TestCutBodyTransient(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.Header().Set("Content-Range", "bytes 0-99999/100000")
		w.Header().Set("Last-Modified", "Sat, 28 Nov 2026 12:00:00 GMT")
		w.WriteHeader(http.StatusOK)
		w.Write(make([]byte, 10))
		// the handler returns: the server closes the connection short
	}))
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "fake-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	b, err := Open(ctx, "s3://pool?endpoint="+srv.URL+"&use_path_style=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, errAll := ReadAll(ctx, b, "m.csv")
	_, errRange := (&Buckets{}).ReadRange(ctx, b, "a.tar", 0, 1000)
	_, errFile := OpenFile(ctx, b, "f.arrow")
	for name, err := range map[string]error{"ReadAll": errAll, "ReadRange": errRange, "OpenFile": errFile} {
		if err == nil || !Transient(err) || Permanent(err) {
			t.Errorf("%s of a body cut short: %v; want a transient error", name, err)
		}
	}
}

// A profile's max_attempts sets the S3 client's tries when
// AWS_MAX_ATTEMPTS does not, as in the SDK, the URL's profile first.
// A worker with no credentials, on a host whose metadata service refuses
// the SDK a role (403), is refused its credentials: that 403 is not the
// object's, and no image may be rejected for it.
func TestS3NoCredentialsRefused(t *testing.T) {
	ctx := context.Background()
	url, requests := failingS3(t, http.StatusNotFound, "NoSuchKey")
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(imds.Close)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.URL)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "")
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = ReadAll(ctx, b, "m.csv")
	if err == nil || !CredentialsRefused(err) || requests.Load() != 0 {
		t.Errorf("read without credentials: CredentialsRefused %v (%v), %d requests reached the bucket; want true, none", CredentialsRefused(err), err, requests.Load())
	}
	// The bucket's own 404, with credentials, is the object's.
	t.Setenv("AWS_ACCESS_KEY_ID", "fake-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
	b2, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, err = ReadAll(ctx, b2, "m.csv"); err == nil || CredentialsRefused(err) || !Permanent(err) {
		t.Errorf("a missing object: CredentialsRefused %v, Permanent %v (%v); want false, true", CredentialsRefused(err), Permanent(err), err)
	}
}

func TestS3ProfileMaxAttempts(t *testing.T) {
	ctx := context.Background()
	url, requests := failingS3(t, http.StatusServiceUnavailable, "ServiceUnavailable")
	t.Setenv("AWS_MAX_ATTEMPTS", "")
	cfg := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(cfg, []byte("[default]\nmax_attempts = 2\n\n[profile once]\nmax_attempts = 1\naws_access_key_id = fake\naws_secret_access_key = fake\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CONFIG_FILE", cfg)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	for _, c := range []struct {
		url  string
		want int64
	}{{url, 2}, {url + "&profile=once", 1}} {
		requests.Store(0)
		b, err := Open(ctx, c.url)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ReadAll(ctx, b, "m.csv"); err == nil {
			t.Fatal("read from a store answering 503: no error")
		}
		b.Close()
		if got := requests.Load(); got != c.want {
			t.Errorf("%s: %d requests, want %d (the profile's max_attempts)", c.url, got, c.want)
		}
	}
}

// A write abandoned after its first parts were uploaded (Abort, or its
// context cancelled: a worker stopping mid-shard) leaves no multipart
// upload behind on S3: its parts would be billed, and no listing of
// objects shows them. A bucket opened with prefix= too.
func TestS3AbandonedWriteLeavesNoParts(t *testing.T) {
	t.Run("bucket", func(t *testing.T) { checkAbandonedWrites(t, "dcd-abandoned") })
	t.Run("prefixed", func(t *testing.T) { checkAbandonedWrites(t, "dcd-abandoned-prefixed", "prefix=dcd/") })
}

func checkAbandonedWrites(t *testing.T, bucket string, query ...string) {
	b := versityGW(t, bucket, query...)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	write := func(key string, abandon func(w *Writer, cancel context.CancelFunc)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w, err := NewWriter(ctx, b, key, "application/octet-stream")
		if err != nil {
			t.Fatal(err)
		}
		for range 24 { // past the first parts (8 MiB each)
			if _, err := w.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond) // let a part or two reach the store
		abandon(w, cancel)
	}
	write("aborted.arrow", func(w *Writer, _ context.CancelFunc) { w.Abort() })
	write("cancelled.arrow", func(w *Writer, cancel context.CancelFunc) {
		cancel()
		if err := w.Close(); err == nil {
			t.Error("a write whose context was cancelled closed without an error")
		}
	})
	var client *s3.Client
	if !b.As(&client) {
		t.Fatal("the bucket has no S3 client")
	}
	out, err := client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range out.Uploads {
		t.Errorf("abandoned write left multipart upload %s of %q", aws.ToString(u.UploadId), aws.ToString(u.Key))
	}
	for _, key := range []string{"aborted.arrow", "cancelled.arrow"} {
		if ok, err := b.Exists(context.Background(), key); ok || err != nil {
			t.Errorf("%s: exists %v, %v; want no object", key, ok, err)
		}
	}
}

// An Azure response error's first line is its request: Brief adds the
// status and code, which name the refusal.
func TestBrief(t *testing.T) {
	err := fmt.Errorf("list: %w", &azcore.ResponseError{StatusCode: http.StatusForbidden, ErrorCode: "AuthorizationFailure"})
	if got := Brief(err); !strings.HasSuffix(got, "(HTTP 403 AuthorizationFailure)") {
		t.Errorf("Brief = %q, want the status and code", got)
	}
	if got := Brief(errors.New("one\ntwo")); got != "one" {
		t.Errorf("Brief = %q, want the first line", got)
	}
}

// The credentials a refusal is said of are those the URL names, else the
// driver's environment.
func TestCredentialsSource(t *testing.T) {
	t.Setenv("AZURE_STORAGE_ACCOUNT", "")
	t.Setenv("AZURE_STORAGE_SAS_TOKEN", "")
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "conn")
	for u, want := range map[string]string{
		"s3://b?region=x":          "AWS_ACCESS_KEY_ID",
		"s3://b?profile=ci":        "the profile ci (profile=)",
		"gs://b?anonymous=true":    "none (anonymous=true)",
		"azblob://c?localemu=true": "AZURE_STORAGE_CONNECTION_STRING",
	} {
		if got := CredentialsSource(u); !strings.Contains(got, want) {
			t.Errorf("CredentialsSource(%q) = %q, want %q", u, got, want)
		}
	}
}
