// Package store is DCD's thin layer over gocloud.dev/blob: opening the one
// bucket a process works in, judging storage errors, and moving Arrow IPC
// files in and out of it.
//
// # URLs
//
// Open takes any gocloud bucket URL whose driver is linked in: file:///dir
// (with ?create_dir=1 to create it), mem://, and s3://bucket?region=…
// (credentials from the AWS_* environment variables or ~/.aws; any
// S3-compatible server with &endpoint=http://host:port&use_path_style=true).
// Options of s3:// URLs include region, endpoint, use_path_style,
// disable_https, profile, anonymous (see gocloud.dev/blob/s3blob and
// gocloud.dev/aws), gs://bucket (Google Cloud Storage, application default
// credentials) and azblob://container (Azure Blob Storage, AZURE_STORAGE_*
// environment variables).
//
// Datasets may also name single objects by URL, scheme://bucket/key?query:
// SplitURL cuts such a URL into its bucket's URL and the key, and Buckets
// opens each bucket once. A file:// URL's bucket is the filesystem root
// (file:///dir/img.png is key dir/img.png of file:///).
//
// # Errors
//
// Classify turns storage errors that no retry can fix (NotFound,
// InvalidArgument, PermissionDenied) into non-retryable Temporal errors and
// returns the rest unchanged, so they are retried.
package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/ipc"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"  // azblob:// buckets, opened by openAzure
	_ "gocloud.dev/blob/fileblob" // file:// buckets
	_ "gocloud.dev/blob/gcsblob"  // gs:// buckets
	_ "gocloud.dev/blob/memblob"  // mem:// buckets, for tests
	"gocloud.dev/blob/s3blob"     // s3:// buckets, opened by openS3
	"gocloud.dev/gcerrors"
	"google.golang.org/api/googleapi"

	"dcd/internal/ahead"
	"dcd/internal/ipcfile"
	"dcd/internal/redact"
)

// CheckURL refuses a bucket URL Open would refuse for its form (checkForm), without
// opening it: for a command that only shows where a bucket's files are.
func CheckURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	return checkForm(u)
}

// checkForm refuses a bucket URL that holds a user or password (its own,
// or its endpoint's): the drivers ignore them, and a worker's arguments,
// logs and its trainers' command lines would show them; credentials come
// from the environment. And an object store's bucket URL that names a
// folder.
func checkForm(u *url.URL) error {
	if u.User != nil {
		return errors.New("a bucket's URL holds no user or password: give the workers credentials in their environment (AWS_*, AZURE_STORAGE_*, GOOGLE_APPLICATION_CREDENTIALS)")
	}
	if e, err := url.Parse(u.Query().Get("endpoint")); err == nil && e.User != nil {
		return errors.New("a bucket's endpoint= holds no user or password: give the workers credentials in their environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
	}
	if u.Scheme != s3blob.Scheme && u.Scheme != azureblob.Scheme && u.Scheme != "gs" {
		return nil
	}
	if dir := strings.Trim(u.Path, "/"); dir != "" {
		return fmt.Errorf("a bucket's URL names no folder: to keep DCD's objects under %s/, give %s://%s the option prefix=%s/", dir, u.Scheme, u.Host, dir)
	}
	return nil
}

// Open opens the bucket at url. A file:// bucket writes no metadata
// sidecar (metadata=skip): DCD reads none of what it holds (content type,
// MD5), and it cost every object a second file created, an MD5 of its
// bytes, and a JSON read beside every read. Where its writes may land on
// another mount than os.TempDir (a data disk, a container's volume), it
// writes each object's temporary file beside it (no_tmp_dir): fileblob
// renames the temporary file into place, which fails across mounts. An s3:// or
// azblob:// bucket keeps its connections for reuse however many reads are
// in flight (see maxIdlePerHost).
//
// A bucket URL of an object store names no folder: s3://b/dcd is refused
// (the drivers would drop "/dcd"), and prefix=dcd/ keeps DCD's objects
// under dcd/, with every driver (s3:// and azblob:// are opened here, not
// by gocloud's URL mux, which reads prefix= for the others).
func Open(ctx context.Context, rawURL string) (*blob.Bucket, error) {
	var b *blob.Bucket
	var prefix string
	wrap := false // the prefix is this function's to apply, not the URL mux's
	u, err := url.Parse(rawURL)
	if err == nil {
		prefix = u.Query().Get("prefix")
	}
	if err == nil {
		err = checkForm(u)
	}
	if err == nil && (u.Scheme == s3blob.Scheme || u.Scheme == azureblob.Scheme) {
		if q := u.Query(); q.Has("prefix") {
			q.Del("prefix")
			u.RawQuery = q.Encode()
			wrap = true
		}
	}
	switch {
	case err != nil:
	case u.Scheme == s3blob.Scheme:
		b, err = openS3(ctx, u)
	case u.Scheme == azureblob.Scheme:
		b, err = openAzure(ctx, u)
	default:
		b, err = blob.OpenBucket(ctx, fileOptions(rawURL))
		if errors.Is(err, fs.ErrNotExist) && u.Scheme == "file" && !u.Query().Has("create_dir") {
			err = fmt.Errorf("%w (the folder must exist: make it, or give the URL the option create_dir=1)", err)
		}
	}
	if err == nil && prefix != "" {
		if wrap {
			b = blob.PrefixedBucket(b, prefix)
		}
		setPrefix(b, prefix)
	}
	if err != nil {
		// The driver's error may quote the URL too: the queries are
		// dropped from both, for the logs and histories they reach.
		return nil, &redactedError{fmt.Sprintf("store: open %q: %s", redact.URL(rawURL), redact.Text(err.Error())), err}
	}
	return b, nil
}

// redactedError is err with a message that leaves out what it must not
// show; errors.Is and As still see err. It has no Unwrap: Temporal's
// failure converter records each error errors.Unwrap reaches, with its
// text, as a cause in the history, err's unredacted one among them.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string        { return e.msg }
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }
func (e *redactedError) As(target any) bool   { return errors.As(e.err, target) }

// fileOptions adds metadata=skip to a file:// URL that sets no metadata
// option, and no_tmp_dir=1 to one that sets no no_tmp_dir when its folder
// and os.TempDir are on different mounts (device), or when it is the root
// (file:///, where SplitURL puts a URL's objects): its writes may land on
// any filesystem.
func fileOptions(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "file" {
		return rawURL // a bad URL fails in OpenBucket, which names the problem
	}
	q := u.Query()
	if !q.Has("metadata") {
		q.Set("metadata", "skip")
	}
	if !q.Has("no_tmp_dir") && (u.Path == "" || u.Path == "/" || !sameFilesystem(u.Path, os.TempDir())) {
		q.Set("no_tmp_dir", "1")
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// sameFilesystem reports whether paths a and b, or their nearest existing
// folders (a bucket's may not exist yet), are on one mount; if either
// cannot be told, it reports false, the choice that works either way.
func sameFilesystem(a, b string) bool {
	da, okA := device(a)
	db, okB := device(b)
	return okA && okB && da == db
}

// Classify marks errors that retrying cannot fix as non-retryable; key names
// the object for the message.
func Classify(err error, key string) error {
	if err == nil {
		return nil
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return err
	}
	if Permanent(err) {
		code := Code(err)
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("store: %s (key %q): %v", code, key, err), "Storage"+code.String(), err)
	}
	return err
}

// Code is gcerrors.Code, or for an error of a store's SDK that gocloud did
// not code (a read newRangeReader made itself), what its HTTP status says.
func Code(err error) gcerrors.ErrorCode {
	code := gcerrors.Code(err)
	if code == gcerrors.Unknown {
		switch httpStatus(err) {
		case http.StatusNotFound:
			return gcerrors.NotFound
		case http.StatusForbidden, http.StatusUnauthorized:
			return gcerrors.PermissionDenied
		}
	}
	return code
}

// Permanent reports whether err is a storage error that no retry can fix:
// the object is gone or forbidden (a file:// one too), its key or URL is
// invalid, or a range read asked for bytes past its end. gocloud gives many such refusals no code
// (S3's 403 InvalidObjectState for an object in Glacier, InvalidAccessKeyId,
// 416 InvalidRange; Azure's 403 AuthorizationPermissionMismatch), so an
// HTTP status of 4xx counts too, but for those a retry may outlast: a
// timeout, a conflict, a failed precondition (the object changed under a
// conditional read), too many requests.
func Permanent(err error) bool {
	// A host name that does not resolve is the worker's (its resolver, a
	// mistyped account or endpoint), not the object's: gocloud's Azure
	// driver codes it NotFound, which would reject the object for good.
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return false
	}
	switch gcerrors.Code(err) {
	case gcerrors.NotFound, gcerrors.InvalidArgument, gcerrors.PermissionDenied:
		return true
	}
	var bad *URLError
	if errors.Is(err, ErrPastEnd) || errors.Is(err, ErrTooLarge) || errors.As(err, &bad) {
		return true
	}
	// A file:// object the worker may not read (EACCES), as S3's
	// AccessDenied, or that no file can be at (a path through a file, a
	// name too long, a loop of links, a NUL), as S3's NotFound; fileblob
	// codes only ENOENT.
	var pe *fs.PathError
	if errors.Is(err, fs.ErrPermission) || errors.As(err, &pe) && slices.Contains([]error{syscall.ENOTDIR, syscall.ENAMETOOLONG, syscall.ELOOP, syscall.EINVAL}, pe.Err) {
		return true
	}
	if s3Passing(err) {
		return false
	}
	switch s := httpStatus(err); s {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusPreconditionFailed, http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	default:
		return 400 <= s && s < 500
	}
}

// s3Passing reports whether err is one of S3's 4xx errors that a retry
// may outlast: a request that timed out or lost its body on the way, or
// credentials that expired (refreshed by the next request) or a clock
// the SDK corrects.
func s3Passing(err error) bool {
	var api interface{ ErrorCode() string } // smithy-go's APIError
	if !errors.As(err, &api) {
		return false
	}
	switch api.ErrorCode() {
	case "RequestTimeout", "IncompleteBody", "ExpiredToken", "TokenRefreshRequired", "RequestTimeTooSkewed":
		return true
	}
	return false
}

// CredentialsRefused reports whether err is the store refusing the
// worker's credentials themselves (an unknown key, a bad signature, an
// expired SAS token), or the worker finding none to send, not access to
// one object: every later request fails
// the same way until they are fixed, so an image read with them is not
// that image's fault. Permanent still holds for it.
func CredentialsRefused(err error) bool {
	if errors.Is(err, errNotTheirAccount) {
		return true
	}
	var api interface{ ErrorCode() string } // smithy-go's APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AuthorizationHeaderMalformed", "InvalidSecurity":
			return true
		}
	}
	var az *azcore.ResponseError
	if errors.As(err, &az) {
		switch az.ErrorCode {
		case "AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation",
			// Every request refused as this one: a key Azurite does not
			// know, an account's firewall, a SAS's address, protocol,
			// resource type or service not the request's.
			"AuthorizationFailure", "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch",
			"AuthorizationResourceTypeMismatch", "AuthorizationServiceMismatch":
			return true
		}
	}
	return credentialsNotFetched(err) || httpStatus(err) == http.StatusUnauthorized
}

// Brief is err's first line, with an Azure response's status and code,
// which its first line lacks (the rest is the response, dozens of lines).
func Brief(err error) string {
	first, _, _ := strings.Cut(err.Error(), "\n")
	var az *azcore.ResponseError
	if errors.As(err, &az) {
		first += fmt.Sprintf(" (HTTP %d %s)", az.StatusCode, az.ErrorCode)
	}
	return first
}

// credentialsNotFetched reports whether err is the AWS SDK failing to
// fetch the worker's credentials from another service (EC2's metadata
// service, STS, SSO) before any request reached the bucket: that
// service's 403 ("no EC2 IMDS role found") would pass for the object's.
// errors.As would stop at the S3 operation's own error, above it.
func credentialsNotFetched(err error) bool {
	if op, ok := err.(interface{ Service() string }); ok && op.Service() != "S3" { // smithy-go's OperationError
		return true
	}
	switch e := err.(type) {
	case interface{ Unwrap() error }:
		return credentialsNotFetched(e.Unwrap())
	case interface{ Unwrap() []error }: // gocloud's errors
		return slices.ContainsFunc(e.Unwrap(), credentialsNotFetched)
	}
	return false
}

// ErrPastEnd is the error of a range read past the object's end: the object
// is not what the caller listed (a manifest's offsets into an archive that
// is shorter, say).
var ErrPastEnd = errors.New("past the end of the object")

// errCut marks a read whose response ended before the bytes the store said
// it would send, a connection closed mid-body: neither the AWS nor the
// Azure SDK retries a body once it has begun, and the next request will
// likely not meet it.
var errCut = errors.New("the store's response ended early")

// readFull is io.ReadFull from a blob reader, marking a body cut short
// (errCut).
func readFull(r io.Reader, p []byte) (int, error) {
	n, err := io.ReadFull(r, p)
	if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF && len(p) > 0 {
		err = fmt.Errorf("%w: %d of %d bytes: %w", errCut, n, len(p), err)
	}
	return n, err
}

// Body marks a body cut short in what r's reads return (errCut, which
// Transient counts), for a reader that parses a blob as it streams (a CSV
// manifest, a tar archive): their parsers return io.ErrUnexpectedEOF for
// a file that is short, and the HTTP body's own, for a connection closed
// mid-body, would pass for it, failing a plan for good.
func Body(r io.Reader) io.Reader { return body{r} }

type body struct{ r io.Reader }

func (b body) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w: %w", errCut, err)
	}
	return n, err
}

// Transient reports whether err is a storage error that a retry may fix: a
// server that is unreachable, throttling or failing for a while, as
// opposed to a missing object, a damaged file or a store that lacks what
// was asked of it. gocloud gives S3's and Azure's server errors (500
// InternalError, 503 SlowDown, ServerBusy) no code of their own, so the
// response's HTTP status is read from the SDK's error too.
func Transient(err error) bool {
	switch gcerrors.Code(err) {
	case gcerrors.DeadlineExceeded, gcerrors.ResourceExhausted, gcerrors.Internal:
		return true
	}
	if errors.Is(err, errCut) || s3Passing(err) {
		return true
	}
	// A certificate that does not verify, or a host name that does not
	// resolve, is a setting to fix: say so now, not after a retry
	// policy's minutes.
	var cert *tls.CertificateVerificationError
	var dns *net.DNSError
	switch {
	case errors.As(err, &cert), errors.As(err, &dns) && dns.IsNotFound:
		return false
	}
	// Every *url.Error is a net.Error, also those of a setting to fix: an
	// https:// endpoint answered in plain HTTP, a scheme the client does
	// not speak, a TLS handshake with something that is not TLS. The rest
	// (the network's errors, a closed connection, HTTP/2's GOAWAY or a
	// stream reset) are worth a retry.
	var ue *url.Error
	if errors.As(err, &ue) {
		var notTLS tls.RecordHeaderError
		msg := ue.Err.Error()
		return !errors.As(ue.Err, &notTLS) && !strings.Contains(msg, "server gave HTTP response to HTTPS client") &&
			!strings.HasPrefix(msg, "unsupported protocol scheme")
	}
	// An errno is a net.Error too, and a file:// store's errors carry
	// one: a missing file (ENOENT) or a permission is no passing failure.
	// A connection's errno (ECONNRESET mid-body) comes in a net.OpError,
	// and is.
	var op *net.OpError
	var errno syscall.Errno
	if !errors.As(err, &op) && errors.As(err, &errno) {
		return errno.Timeout() || errno.Temporary()
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	switch httpStatus(err) {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		http.StatusTooManyRequests, http.StatusRequestTimeout:
		return true
	}
	return false // 501 Not Implemented, say: a store without a feature DCD uses
}

// httpStatus is the HTTP status of the cloud SDK response error in err's
// chain, 0 if there is none.
func httpStatus(err error) int {
	var aws interface{ HTTPStatusCode() int } // smithy-go's, under every AWS error
	var az *azcore.ResponseError
	var gcs *googleapi.Error
	switch {
	case errors.As(err, &aws):
		return aws.HTTPStatusCode()
	case errors.As(err, &az):
		return az.StatusCode
	case errors.As(err, &gcs):
		return gcs.Code
	}
	return 0
}

// ReadAll reads the whole object at key.
func ReadAll(ctx context.Context, b *blob.Bucket, key string) ([]byte, error) {
	data, err := readAll(ctx, b, key, 0)
	if err != nil {
		return nil, fmt.Errorf("store: read %q: %w", key, err)
	}
	return data, nil
}

// File is an object open for reads at any offset: on a file:// bucket a
// pread each, one open for many reads (each range reader of the bucket
// opens the file again, and looks for its attributes); on any other, a
// ranged request each, after a first that reads the object's head and
// learns its size.
type File struct {
	key  string
	size int64

	// file:// buckets
	file *os.File
	r    *blob.Reader // holds file open

	// other buckets
	ctx      context.Context
	b        *blob.Bucket
	head     []byte // the object's first HeadBytes, or all of it
	modified time.Time
}

// HeadBytes is how much of an object OpenFile reads first from a bucket
// other than file://: the request that learns its size might as well bring
// what a request of a few KiB costs no more time to, and the start of an
// Arrow file is where its schema is, and its first batch's metadata.
const HeadBytes = 64 << 10

// OpenFile opens the object at key for reads at any offset.
func OpenFile(ctx context.Context, b *blob.Bucket, key string) (*File, error) {
	f := &File{key: key}
	if isLocal(b) {
		r, err := b.NewRangeReader(ctx, key, 0, 0, &blob.ReaderOptions{BeforeRead: func(as func(any) bool) error {
			as(&f.file)
			return nil
		}})
		if err != nil {
			return nil, fmt.Errorf("store: open %q: %w", key, err)
		}
		f.r = r
		if f.file != nil {
			// The size of the file opened: the reader's is of a stat
			// before the open, and another writer's rename may come
			// between them.
			info, err := f.file.Stat()
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("store: open %q: %w", key, err)
			}
			f.size = info.Size()
			return f, nil
		}
		r.Close() // a file:// bucket of another driver: read by ranges
		f.r = nil
	}
	r, err := b.NewRangeReader(ctx, key, 0, HeadBytes, nil)
	if err != nil {
		return nil, fmt.Errorf("store: open %q: %w", key, err)
	}
	defer r.Close()
	f.ctx, f.b, f.size, f.modified = ctx, b, r.Size(), r.ModTime()
	f.head = make([]byte, min(f.size, HeadBytes))
	if _, err := readFull(r, f.head); err != nil {
		return nil, fmt.Errorf("store: read %q: %w", key, err)
	}
	return f, nil
}

// Size is the object's size.
func (f *File) Size() int64 { return f.size }

// Head is what the first request read of the object: its first HeadBytes,
// or all of it; nil for a file:// bucket's.
func (f *File) Head() []byte { return f.head }

// Local reports whether a read is a system call rather than a request.
func (f *File) Local() bool { return f.file != nil }

// ReadAt reads len(p) bytes at off. It does not cut a request short at the
// object's end: reading past it is an error.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	switch {
	case f.file != nil:
		return f.file.ReadAt(p, off)
	case off < 0 || off > f.size || int64(len(p)) > f.size-off:
		return 0, fmt.Errorf("store: read %q: %d bytes at %d of %d", f.key, len(p), off, f.size)
	case off+int64(len(p)) <= int64(len(f.head)):
		return copy(p, f.head[off:]), nil
	}
	r, err := f.b.NewRangeReader(f.ctx, f.key, off, int64(len(p)), nil)
	if err != nil {
		return 0, fmt.Errorf("store: read %q: %w", f.key, err)
	}
	defer r.Close()
	// Each request may find another version of the object: bytes of two
	// versions read as one file could pair one image's name with
	// another's values.
	if r.Size() != f.size || !r.ModTime().Equal(f.modified) {
		return 0, fmt.Errorf("store: read %q: it changed while being read (%d bytes modified %v, then %d modified %v)",
			f.key, f.size, f.modified, r.Size(), r.ModTime())
	}
	n, err := readFull(r, p)
	if err != nil {
		return n, fmt.Errorf("store: read %q: %d bytes at %d: %w", f.key, len(p), off, err)
	}
	return n, nil
}

// Close closes the file.
func (f *File) Close() error {
	if f.r != nil {
		return f.r.Close()
	}
	return nil
}

// isLocal reports whether b is a file:// bucket, whose objects OpenFile
// opens as files: a read of one costs a system call, not a request.
func isLocal(b *blob.Bucket) bool {
	var dir os.FileInfo
	return b.As(&dir)
}

// readAll is blob.Bucket.ReadAll reading into a buffer of the object's
// size, which copies the data once: blob.Bucket.ReadAll uses io.ReadAll,
// which grows its buffer from 512 bytes and copies a feature file of a few
// MiB, or a photo of a few hundred KiB, several times over (in a pass on
// cached features, more CPU than the read itself).
func readAll(ctx context.Context, b *blob.Bucket, key string, limit int64) ([]byte, error) {
	r, err := newRangeReader(ctx, b, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if limit > 0 && r.Size() > limit {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, r.Size(), limit)
	}
	if err := Reserve(ctx, max(r.Size(), 0)); err != nil {
		return nil, err
	}
	// io.ReadAll's loop over a buffer with room for the object and the
	// read that finds its end. A reader whose content outgrows its Size
	// (a store that decompresses on the way) still reads to the end.
	data := make([]byte, 0, max(r.Size(), 0)+1)
	for {
		n, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w after %d bytes: %w", errCut, len(data), err)
		}
		if err != nil {
			return nil, err
		}
		if limit > 0 && int64(len(data)) > limit {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
	}
}

// WithReserve has a read of a whole object under ctx call reserve with its
// size before it allocates its bytes: a caller holding many such reads at
// once (an embedding's readers, before its decoders) bounds the bytes they
// hold, which the objects' sizes alone do not (64 files of 256 MiB).
func WithReserve(ctx context.Context, reserve func(ctx context.Context, n int64) error) context.Context {
	return context.WithValue(ctx, reserveKey{}, reserve)
}

type reserveKey struct{}

// Reserve calls ctx's reserve (WithReserve), if any, for n bytes a read
// is about to hold: one that fetches its object as a range of another (an
// archive's member) reserves it as a whole object's read does.
func Reserve(ctx context.Context, n int64) error {
	if reserve, ok := ctx.Value(reserveKey{}).(func(context.Context, int64) error); ok {
		return reserve(ctx, n)
	}
	return nil
}

// ErrTooLarge is the error of a read of more bytes than its caller takes
// (Buckets.ReadAtMost): no retry makes the object smaller.
var ErrTooLarge = errors.New("the object is too large")

// ErrDamaged marks a file read whole that is not what its writer wrote (a
// truncated copy, a file of another tool under the key): reading it again
// gives the same bytes, so a cache holding it must compute it again.
var ErrDamaged = errors.New("damaged")

// Damaged is err, said of a file read whole: errors.Is(it, ErrDamaged).
func Damaged(err error) error { return damaged{err} }

type damaged struct{ error }

func (d damaged) Unwrap() error        { return d.error }
func (d damaged) Is(target error) bool { return target == ErrDamaged }

// WriteAll writes data at key atomically: readers see the old object or the
// new one, never a part. Its content type is gocloud's guess from data.
func WriteAll(ctx context.Context, b *blob.Bucket, key string, data []byte) error {
	if err := b.WriteAll(ctx, key, data, WriterOptions(b, "")); err != nil {
		return fmt.Errorf("store: write %q: %w", key, err)
	}
	return nil
}

// countingWriter makes a blob.Writer look like the io.WriteSeeker that
// ipc.NewFileWriter wants: the writer only asks for its own position. It
// buffers, because the IPC writer writes each buffer of a record, and each
// alignment pad, on its own, and a blob.Writer passes small writes straight
// to its driver: a syscall each, for file://.
type countingWriter struct {
	w *bufio.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Seek(offset int64, whence int) (int64, error) {
	if offset == 0 && whence == io.SeekCurrent {
		return c.n, nil
	}
	return 0, errors.New("store: arrow writer: seek not supported")
}

// Writer streams an object to a key through a buffer. The object appears
// only when Close succeeds; Abort leaves any earlier object.
type Writer struct {
	*bufio.Writer
	key    string
	cancel context.CancelFunc
	bw     *blob.Writer
}

// NewWriter starts writing the object at key.
func NewWriter(ctx context.Context, b *blob.Bucket, key, contentType string) (*Writer, error) {
	ctx, cancel := context.WithCancel(ctx)
	bw, err := b.NewWriter(ctx, key, WriterOptions(b, contentType))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("store: write %q: %w", key, err)
	}
	return &Writer{Writer: bufio.NewWriterSize(bw, 256<<10), key: key, cancel: cancel, bw: bw}, nil
}

// Close commits the object.
func (w *Writer) Close() error {
	defer w.cancel()
	if err := w.Flush(); err != nil {
		w.Abort()
		return fmt.Errorf("store: write %q: %w", w.key, err)
	}
	if err := w.bw.Close(); err != nil {
		return fmt.Errorf("store: write %q: %w", w.key, err)
	}
	return nil
}

// Abort drops what was written; the object at the key is left as it was.
func (w *Writer) Abort() {
	w.cancel() // a cancelled blob.Writer discards its data on Close
	w.bw.Close()
}

// ArrowWriter streams record batches into an Arrow IPC file at a key. The
// file appears only when Close succeeds; Abort leaves any earlier object.
type ArrowWriter struct {
	w  *Writer
	fw *ipc.FileWriter
}

// NewArrowWriter starts writing an IPC file with the given schema at key.
func NewArrowWriter(ctx context.Context, b *blob.Bucket, key string, schema *arrow.Schema, mem memory.Allocator) (*ArrowWriter, error) {
	w, err := NewWriter(ctx, b, key, "application/vnd.apache.arrow.file")
	if err != nil {
		return nil, err
	}
	fw, err := ipc.NewFileWriter(&countingWriter{w: w.Writer}, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err != nil {
		w.Abort()
		return nil, fmt.Errorf("store: write %q: %w", key, err)
	}
	return &ArrowWriter{w: w, fw: fw}, nil
}

// Write appends one record batch.
func (w *ArrowWriter) Write(rec arrow.Record) error {
	if err := w.fw.Write(rec); err != nil {
		return fmt.Errorf("store: write %q: %w", w.w.key, err)
	}
	return nil
}

// Close writes the footer and commits the object.
func (w *ArrowWriter) Close() error {
	if err := w.fw.Close(); err != nil {
		w.Abort()
		return fmt.Errorf("store: write %q: %w", w.w.key, err)
	}
	return w.w.Close()
}

// Abort drops what was written; the object at the key is left as it was.
func (w *ArrowWriter) Abort() { w.w.Abort() }

// WriteArrow writes the records as one IPC file at key.
func WriteArrow(ctx context.Context, b *blob.Bucket, key string, schema *arrow.Schema, mem memory.Allocator, recs ...arrow.Record) error {
	w, err := NewArrowWriter(ctx, b, key, schema, mem)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			w.Abort()
			return err
		}
	}
	return w.Close()
}

// ArrowFile is an Arrow IPC file read whole from storage.
type ArrowFile struct {
	*ipc.FileReader
	Data []byte // the file's bytes, for a reader of its own
}

// OpenArrow reads the IPC file at key. The caller must Close it. Records from
// RecordAt must be Released by the caller.
func OpenArrow(ctx context.Context, b *blob.Bucket, key string, mem memory.Allocator) (*ArrowFile, error) {
	// blob.Reader has no ReadAt, which the IPC file reader needs; files are
	// one shard each, so reading them whole is bounded.
	data, err := ReadAll(ctx, b, key)
	if err != nil {
		return nil, err
	}
	if err := ipcfile.Check(data); err != nil {
		return nil, Damaged(fmt.Errorf("store: arrow file %q: %w", key, err))
	}
	var r *ipc.FileReader
	err = ipcfile.Safely(func() (err error) {
		r, err = ipc.NewFileReader(bytes.NewReader(data), ipc.WithAllocator(mem))
		return err
	})
	if err != nil {
		return nil, Damaged(fmt.Errorf("store: arrow file %q: %w", key, err))
	}
	return &ArrowFile{r, data}, nil
}

// Record is the file's record i, or an error where Arrow's reader panics
// (a damaged file): a worker that panicked would have its activity tried
// again on the same file, where an error lets the caller decide (a
// damaged cache entry is computed again).
func (f *ArrowFile) Record(i int) (rec arrow.Record, err error) {
	err = ipcfile.Safely(func() (err error) {
		rec, err = f.FileReader.Record(i)
		return err
	})
	return rec, err
}

// RecordAt is Record for the caller to Release.
func (f *ArrowFile) RecordAt(i int) (rec arrow.Record, err error) {
	err = ipcfile.Safely(func() (err error) {
		rec, err = f.FileReader.RecordAt(i)
		return err
	})
	return rec, err
}

// ListPageSize is how many objects List asks blob.Bucket.ListPage for at
// a time, which asks its driver again until it has them: an object store
// answers at most 1,000 (S3, GCS) or 5,000 (Azure) a request, but a
// file:// bucket walks its folder from the start for every page: with
// blob's default of 1,000, listing n files visited n²/2,000 of them, 1.7 s
// for an ImageFolder of 20,000 and hours for 10^6.
const ListPageSize = 1 << 16

// pageSize is ListPageSize, and requestPage one request's worth of keys on
// an object store (S3's and GCS's most), which ListFolders asks for;
// smaller in tests.
var pageSize, requestPage = ListPageSize, 1000

// List calls fn for every object, and folder when opts sets a Delimiter,
// that b lists under opts, in key order, a page of ListPageSize at a time.
func List(ctx context.Context, b *blob.Bucket, opts *blob.ListOptions, fn func(*blob.ListObject) error) error {
	if (opts == nil || opts.Delimiter == "") && isLocal(b) {
		prefix := ""
		if opts != nil {
			prefix = opts.Prefix
		}
		return listTree(ctx, b, prefix, "", fn)
	}
	_, err := listPages(ctx, b, opts, blob.FirstPageToken, pageSize, 0, fn)
	return err
}

// listPages lists from token on, pages of size keys, up to pages of them
// (all if 0), and returns the token of the page after (empty after the
// last).
func listPages(ctx context.Context, b *blob.Bucket, opts *blob.ListOptions, token []byte, size, pages int, fn func(*blob.ListObject) error) (next []byte, err error) {
	for n := 0; len(token) > 0 && (pages == 0 || n < pages); n++ {
		var page []*blob.ListObject
		page, token, err = b.ListPage(ctx, token, size, opts)
		if err != nil {
			return nil, err
		}
		testHookPage()
		for _, obj := range page {
			if err := fn(obj); err != nil {
				return nil, err
			}
		}
	}
	return token, nil
}

// testHookPage is called for each page listed.
var testHookPage = func() {}

// FoldersAhead is how many folders ListFolders lists ahead of the one it
// hands out, and folderPages how many requests' pages of each: up to
// 128,000 keys held, about 25 MiB. A folder longer than that is listed on
// a page at a time when its turn comes.
const (
	FoldersAhead = 16
	folderPages  = 8
)

// ListFolders is List of the objects under prefix from the key from on
// ("" from the first), for objects that sit in many folders under it, as
// an ImageFolder's do in their labels. An object store lists a prefix
// 1,000 keys a request, each asked for after the one before: a pool of
// 10^7 images waits on 10,000 of them, one after another. Keys under one
// folder sort together, so ListFolders lists the folders, then the first
// pages of FoldersAhead of them at once, ahead of the one being taken, and
// the rest of a longer folder when it comes to it. Where folders are tiny
// (the first FoldersAhead hold fewer keys than one request returns: an
// identity's five photos, say), a request a folder lists fewer keys than
// one flat listing would, so it lists the rest flat; it judges by those
// first folders only, as layouts are mostly alike throughout.
//
// From a key, the folders before its own are not listed, and on S3 and GCS
// the requests begin at it (startingAt; on GCS, unless gcsblob escapes the
// key); on Azure its folder's keys before it are listed and skipped, and
// where the folders are tiny (listed flat) the keys of the prefix before
// it.
func ListFolders(ctx context.Context, b *blob.Bucket, prefix, from string, fn func(*blob.ListObject) error) error {
	if isLocal(b) { // a local folder lists in microseconds
		return listTree(ctx, b, prefix, from, fn)
	}
	folders := ahead.Stream(ctx, FoldersAhead, func(ctx context.Context, start func(ahead.Fetch[folderHead]) bool) error {
		order := keyOrder{prefix: prefix}
		opts := startingAt(b, &blob.ListOptions{Prefix: prefix, Delimiter: "/"}, folderOf(prefix, from))
		_, err := listPages(ctx, b, opts, blob.FirstPageToken, requestPage, 0, func(obj *blob.ListObject) error {
			if repeat, err := order.next(obj.Key); repeat || err != nil {
				return err
			}
			if before(obj, from) {
				return nil
			}
			if !start(func(ctx context.Context) (folderHead, error) { return listHead(ctx, b, obj, from) }) {
				return ctx.Err()
			}
			return nil
		})
		return err
	}, nil)
	defer folders.Stop()
	last := "" // the last key handed to fn
	order := keyOrder{prefix: prefix}
	emit := func(obj *blob.ListObject) error {
		if repeat, err := order.next(obj.Key); repeat || err != nil {
			return err
		}
		if obj.Key < from {
			return nil // in from's folder, where the store began before it
		}
		last = obj.Key
		return fn(obj)
	}
	taken, keys := 0, 0
	for {
		h, err := folders.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, obj := range h.objects {
			if err := emit(obj); err != nil {
				return err
			}
		}
		if len(h.next) > 0 {
			if _, err := listPages(ctx, b, h.opts, h.next, requestPage, 0, emit); err != nil {
				return err
			}
		}
		if taken, keys = taken+1, keys+len(h.objects); taken == FoldersAhead && keys < requestPage {
			folders.Stop()
			testHookFlat()
			if last != "" {
				from = last + "\x00" // the least key after last
			}
			return listFlat(ctx, b, prefix, from, fn)
		}
	}
}

// testHookFlat is called when ListFolders lists the rest flat.
var testHookFlat = func() {}

// folderHead is the first pages of a folder's listing, and where the rest
// begins; an object beside the folders is a head of its own.
type folderHead struct {
	objects []*blob.ListObject
	opts    *blob.ListOptions
	next    []byte
}

// listHead lists the first pages of the folder obj, from the key from on
// where from is in it.
func listHead(ctx context.Context, b *blob.Bucket, obj *blob.ListObject, from string) (folderHead, error) {
	if !obj.IsDir {
		return folderHead{objects: []*blob.ListObject{obj}}, nil
	}
	h := folderHead{opts: &blob.ListOptions{Prefix: obj.Key}}
	if strings.HasPrefix(from, obj.Key) {
		h.opts = startingAt(b, h.opts, from)
	}
	var err error
	h.next, err = listPages(ctx, b, h.opts, blob.FirstPageToken, requestPage, folderPages, func(o *blob.ListObject) error {
		h.objects = append(h.objects, o)
		return nil
	})
	return h, err
}

// before says whether every key of obj, a folder or an object, sorts
// before from.
func before(obj *blob.ListObject, from string) bool {
	if obj.IsDir && strings.HasPrefix(from, obj.Key) {
		return false
	}
	return obj.Key < from
}

// folderOf is the entry of from in a listing of prefix by folders: its
// folder under prefix (prefix/label/), or from itself when it is not in
// one.
func folderOf(prefix, from string) string {
	rel, ok := strings.CutPrefix(from, prefix)
	if !ok {
		return from
	}
	if i := strings.Index(rel, "/"); i >= 0 {
		return prefix + rel[:i+1]
	}
	return from
}

// listFlat lists prefix flat from the key from on.
func listFlat(ctx context.Context, b *blob.Bucket, prefix, from string, fn func(*blob.ListObject) error) error {
	order := keyOrder{prefix: prefix}
	_, err := listPages(ctx, b, startingAt(b, &blob.ListOptions{Prefix: prefix}, from), blob.FirstPageToken, pageSize, 0, func(obj *blob.ListObject) error {
		if repeat, err := order.next(obj.Key); repeat || err != nil {
			return err
		}
		if obj.Key < from {
			return nil
		}
		return fn(obj)
	})
	return err
}

// keyOrder checks that a listing of prefix gives its keys in key order.
// Folders are handed out as they come, and a plan resumes from a key, so
// a store that lists otherwise would lose keys: Azure Data Lake Storage's
// hierarchical namespace lists in path order ("a/…" before "a-b/…"), and
// fake-gcs-server gives each page of a listing by folders the folders
// after it.
type keyOrder struct{ prefix, last string }

// next takes the listing's next key: repeat says it is the last one again
// (a store may repeat an entry across pages), err that it came out of
// order, for good.
func (o *keyOrder) next(key string) (repeat bool, err error) {
	if o.last != "" && key <= o.last {
		if key == o.last {
			return true, nil
		}
		return false, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"store: list %q: the store listed %q after %q, not in key order, as Azure Data Lake Storage's hierarchical namespace lists; DCD would miss images listing it: name the images in a manifest (CSV, Parquet or WebDataset) instead",
			o.prefix, key, o.last), "StorageListOrder", nil)
	}
	o.last = key
	return false, nil
}

// listTree lists a file:// bucket a folder at a time, from the key from
// on. The driver walks folders in name order, "a" before "a b", but their
// keys sort the other way ("a b/…" < "a/…", a space being less than a
// slash), and a page of a flat listing resumes after its last key: the
// keys under "a b/" that the walk reached after that page were skipped, a
// whole class of an ImageFolder gone without an error. A folder's entries
// are sorted here, and its subfolders listed in that order. A symbolic
// link is listed as what it points to (linked).
func listTree(ctx context.Context, b *blob.Bucket, prefix, from string, fn func(*blob.ListObject) error) error {
	var level []*blob.ListObject
	if _, err := listPages(ctx, b, &blob.ListOptions{Prefix: prefix, Delimiter: "/"}, blob.FirstPageToken, pageSize, 0, func(obj *blob.ListObject) error {
		if !before(obj, from) {
			level = append(level, obj)
		}
		return nil
	}); err != nil {
		return err
	}
	slices.SortFunc(level, func(x, y *blob.ListObject) int { return strings.Compare(x.Key, y.Key) })
	for _, obj := range level {
		var err error
		switch {
		case obj.IsDir:
			err = listTree(ctx, b, obj.Key, from, fn)
		default:
			if err = linked(ctx, b, obj); err == nil {
				err = fn(obj)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// linked gives a listed symbolic link the size and time of the file it
// points to, which the driver's walk does not follow: its own would keep
// an image that changed behind it looking unchanged to the cache. A link
// to a folder (or to nothing) is listed as it is (LinkedFolder).
func linked(ctx context.Context, b *blob.Bucket, obj *blob.ListObject) error {
	if !isLink(obj) {
		return nil
	}
	attrs, err := b.Attributes(ctx, obj.Key)
	switch {
	case gcerrors.Code(err) == gcerrors.NotFound:
		return nil // a folder, or nothing: what the caller makes of it (LinkedFolder)
	case err != nil:
		return fmt.Errorf("store: %q, a symbolic link: %w", obj.Key, err)
	}
	obj.Size, obj.ModTime = attrs.Size, attrs.ModTime
	return nil
}

func isLink(obj *blob.ListObject) bool {
	var fi os.FileInfo
	return obj.As(&fi) && fi.Mode()&os.ModeSymlink != 0
}

// LinkedFolder reports whether a listed object of a file:// bucket is a
// symbolic link to a folder or to nothing, which the driver lists as a file
// and does not list into: an ImageFolder's class linked in from elsewhere
// would be left out without a word.
func LinkedFolder(ctx context.Context, b *blob.Bucket, obj *blob.ListObject) bool {
	if !isLink(obj) {
		return false
	}
	_, err := b.Attributes(ctx, obj.Key)
	return gcerrors.Code(err) == gcerrors.NotFound
}

// ErrLinkedFolder is the error at a LinkedFolder that would be read: copy
// the folder in, bind-mount it (mount --bind), or name its target instead.
var ErrLinkedFolder = errors.New("copy or bind-mount the folder instead, or name its target")

// Exists reports whether an object is at key.
func Exists(ctx context.Context, b *blob.Bucket, key string) (bool, error) {
	ok, err := b.Exists(ctx, key)
	if err != nil {
		return false, fmt.Errorf("store: exists %q: %w", key, err)
	}
	return ok, nil
}

// DefaultURL is the bucket a process uses when not told otherwise: the
// DCD_STORAGE environment variable, else the folder .dcd/storage under the
// working directory (git-ignored in the DCD checkout).
func DefaultURL() string {
	if u := os.Getenv("DCD_STORAGE"); u != "" {
		return u
	}
	dir, err := filepath.Abs(filepath.Join(".dcd", "storage"))
	if err != nil {
		dir = filepath.Join(".dcd", "storage")
	}
	// Escaped: a folder named "a#b" or "50%" is a path, not a fragment.
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir), RawQuery: "create_dir=1"}).String()
}
