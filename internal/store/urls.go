package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/s3blob"

	"dcd/internal/redact"
	"dcd/internal/webdataset"
)

// IsURL reports whether ref is an absolute URL (scheme://…) rather than a
// key in the worker's own bucket.
func IsURL(ref string) bool {
	i := strings.Index(ref, "://")
	if i <= 0 {
		return false
	}
	for _, r := range ref[:i] {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// SplitURL splits an object URL into the URL of its bucket and its key:
// scheme://bucket/path/to/key?query gives scheme://bucket?query and
// path/to/key. The query (region, endpoint, …) stays with the bucket.
//
// file:// URLs have no bucket name: file:///dir/key?query gives the bucket
// file:///?query (the filesystem root) and the key dir/key, so every local
// path is one bucket. A URL ending in "/" gives a key ending in "/", a
// prefix.
func SplitURL(ref string) (bucketURL, key string, err error) {
	u, err := url.Parse(ref)
	if err != nil {
		return "", "", &URLError{fmt.Sprintf("store: url %q: %v", redact.URL(ref), redact.Text(err.Error()))}
	}
	bad := func(format string, args ...any) (string, string, error) {
		return "", "", &URLError{fmt.Sprintf("store: url %q: ", redact.URL(ref)) + fmt.Sprintf(format, args...)}
	}
	switch {
	case u.Scheme == "":
		return bad("no scheme")
	case !blob.DefaultURLMux().ValidBucketScheme(u.Scheme):
		return bad("%s:// is no store DCD reads (s3://, gs://, azblob://, file://)", u.Scheme)
	case u.Fragment != "":
		// Read as a URL, "img#1.jpg" names the object "img": escape a '#'
		// in a key as %23.
		return bad("a '#' and what follows it are not part of an object's URL; write '#' in a key as %%23")
	}
	if u.Scheme == "file" {
		if u.Host != "" && u.Host != "localhost" {
			return bad("a file URL has three slashes, file:///dir/file")
		}
		b := &url.URL{Scheme: "file", Path: "/", RawQuery: u.RawQuery}
		return b.String(), strings.TrimPrefix(u.Path, "/"), nil
	}
	if u.Host == "" {
		return bad("no bucket name")
	}
	b := &url.URL{Scheme: u.Scheme, Host: u.Host, RawQuery: u.RawQuery}
	return b.String(), strings.TrimPrefix(u.Path, "/"), nil
}

// URLError is a URL that names no object a store could hold: no retry
// reads it (Permanent).
type URLError struct{ msg string }

func (e *URLError) Error() string { return e.msg }

// JoinURL is SplitURL's inverse: the URL of key in the bucket at bucketURL.
func JoinURL(bucketURL, key string) (string, error) {
	u, err := url.Parse(bucketURL)
	if err != nil {
		return "", fmt.Errorf("store: url %q: %w", bucketURL, err)
	}
	u.Path = "/" + key
	u.RawPath = ""
	return u.String(), nil
}

// MaxBuckets is how many buckets a Buckets keeps open.
const MaxBuckets = 1024

// Buckets opens the buckets that absolute URLs name and keeps them: a
// worker reads images from many buckets but opens each one (and its client
// and credentials) once, not once a read. Buckets of one store that differ
// only in prefix= (a manifest whose rows each name another, prefix=<row>/,
// meets thousands in one pass) share the bucket without it, each a prefix
// over it: one client, one pool of connections. It keeps the MaxBuckets
// used last: a worker that runs for months meets many buckets. One
// dropped is not closed, as a read or a listing may still hold it: its
// memory goes when they are done, its idle connections after their
// clients' idle timeout (90 s). The zero value is ready to use; it is
// safe for concurrent use.
type Buckets struct {
	mu   sync.Mutex
	open map[string]*openBucket // by bucket URL
	tick uint64
}

// openStore is Open; a test replaces it.
var openStore = Open

// baseName marks the name of a bucket kept as the base of prefixed ones
// (openNew): not a URL, so no caller's.
const baseName = "\x00base:"

type openBucket struct {
	b    *blob.Bucket
	err  error
	done chan struct{} // closed once b or err is set
	used uint64        // Buckets.tick when last opened
}

// Open returns the bucket at bucketURL, opening it the first time: its
// options in any order are one bucket, with one client and one pool of
// connections. A bucket being opened (a store's config and credentials
// loaded, for seconds at times) holds up only the reads of that bucket,
// not those of the buckets already open.
func (bs *Buckets) Open(ctx context.Context, bucketURL string) (*blob.Bucket, error) {
	name := bucketURL
	u, err := url.Parse(bucketURL)
	if err == nil {
		u.RawQuery = u.Query().Encode() // sorted by key
		name = u.String()
	}
	bs.mu.Lock()
	bs.tick++
	if o, ok := bs.open[name]; ok {
		o.used = bs.tick
		bs.mu.Unlock()
		select {
		case <-o.done:
			return o.b, o.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if bs.open == nil {
		bs.open = map[string]*openBucket{}
	}
	if len(bs.open) >= MaxBuckets {
		var last string
		for n, o := range bs.open {
			if last == "" || o.used < bs.open[last].used {
				last = n
			}
		}
		delete(bs.open, last)
	}
	o := &openBucket{done: make(chan struct{}), used: bs.tick}
	bs.open[name] = o
	bs.mu.Unlock()

	// Opened aside, so that this caller too gives up with its context
	// (a store's credentials that never answer) while the open goes on
	// for the next read. Kept for the process, not the activity that
	// opens it first: a client may keep its context (GCS's token
	// refreshes).
	go func() {
		defer close(o.done)
		defer func() {
			// A driver's panic fails this open, not every later one of the
			// URL, which would wait on done forever, nor the worker.
			if p := recover(); p != nil {
				o.b, o.err = nil, fmt.Errorf("store: open %q: %v", redact.URL(bucketURL), p)
			}
			if o.err != nil { // not kept: the next read tries again
				bs.mu.Lock()
				if bs.open[name] == o {
					delete(bs.open, name)
				}
				bs.mu.Unlock()
			}
		}()
		o.b, o.err = bs.openNew(context.WithoutCancel(ctx), bucketURL, u, err)
	}()
	select {
	case <-o.done:
		return o.b, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// openNew opens the bucket at bucketURL (parsed as u, or failing to parse
// with parseErr). Of an S3, Azure or GCS bucket with a prefix=, it opens
// (and keeps) the bucket without it and returns a prefix over that.
func (bs *Buckets) openNew(ctx context.Context, bucketURL string, u *url.URL, parseErr error) (*blob.Bucket, error) {
	var b *blob.Bucket
	var err error
	if parseErr == nil && (u.Scheme == s3blob.Scheme || u.Scheme == azureblob.Scheme || u.Scheme == "gs") && u.Query().Get("prefix") != "" {
		q := u.Query()
		prefix := q.Get("prefix")
		q.Del("prefix")
		without := *u
		without.RawQuery = q.Encode()
		// Under a name of its own, never handed out: PrefixedBucket
		// marks the bucket it wraps closed (each prefix shares its
		// driver), so the URL without prefix= opens a bucket of its own.
		base, err := bs.Open(ctx, baseName+without.String())
		if err != nil {
			return nil, err
		}
		b = blob.PrefixedBucket(base, prefix)
		setPrefix(b, prefix)
		return b, nil
	}
	b, err = openStore(ctx, strings.TrimPrefix(bucketURL, baseName))
	if err != nil && optionRefused(err.Error()) {
		// A URL a manifest names with options the driver refuses (a
		// misspelt region=, an unknown parameter) opens no better when
		// tried again: its images are unreadable, not a failing store.
		// Not the worker's own setup (a profile= it lacks, no default
		// credentials), which failed reads must not cache as rejects.
		return nil, &URLError{err.Error()}
	}
	return b, err
}

// optionRefused says whether an error of Open is a driver refusing one of
// the URL's options, its name or its value (gocloud's and DCD's wording),
// not the worker's setup failing (a profile it lacks, no credentials).
func optionRefused(msg string) bool {
	for _, s := range []string{"query parameter", "invalid value for", "not allowed", "invalid protocol", "multiple values of"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// Resolve returns the bucket and key that ref names: ref itself in def when
// it is a key, or the URL's own bucket and key when it is an absolute URL.
func (bs *Buckets) Resolve(ctx context.Context, def *blob.Bucket, ref string) (*blob.Bucket, string, error) {
	if !IsURL(ref) {
		return def, ref, nil
	}
	bu, key, err := SplitURL(ref)
	if err != nil {
		return nil, "", err
	}
	b, err := bs.Open(ctx, bu)
	if err != nil {
		return nil, "", err
	}
	return b, key, nil
}

// ReadAll reads the object ref names, a key in def or an absolute URL.
func (bs *Buckets) ReadAll(ctx context.Context, def *blob.Bucket, ref string) ([]byte, error) {
	return bs.ReadAtMost(ctx, def, ref, 0)
}

// ReadAtMost is ReadAll of an object of at most limit bytes (0: any),
// refusing a larger one (ErrTooLarge) before reading it.
func (bs *Buckets) ReadAtMost(ctx context.Context, def *blob.Bucket, ref string, limit int64) ([]byte, error) {
	if m, ok := webdataset.ParseKey(ref); ok {
		if limit > 0 && m.Size > limit {
			return nil, fmt.Errorf("store: read %q: %w: %d bytes, more than %d", m.Name, ErrTooLarge, m.Size, limit)
		}
		if err := Reserve(ctx, m.Size); err != nil { // as a whole object's read
			return nil, err
		}
		data, err := bs.ReadRange(ctx, def, m.Archive, m.Offset, m.Size)
		if err != nil {
			return nil, fmt.Errorf("store: read %q: %w", m.Name, err)
		}
		return data, nil
	}
	b, key, err := bs.Resolve(ctx, def, ref)
	if err != nil {
		return nil, err
	}
	data, err := readAll(ctx, b, key, limit)
	if err != nil {
		return nil, fmt.Errorf("store: read %q: %w", redact.URL(ref), err)
	}
	return data, nil
}

// ReadRange reads length bytes of ref from offset. A range past the
// object's end is an error (ErrPastEnd): the object is not what the caller
// listed. The buffer is made once the object's size is known, so that a
// manifest's claim of a huge range costs an error, not the memory.
func (bs *Buckets) ReadRange(ctx context.Context, def *blob.Bucket, ref string, offset, length int64) ([]byte, error) {
	b, key, err := bs.Resolve(ctx, def, ref)
	if err != nil {
		return nil, err
	}
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("bytes %d-%d of %q: %w", offset, offset+length, ref, err)
	}
	if offset < 0 || length < 0 {
		return fail(errors.New("a negative offset or length"))
	}
	r, err := newRangeReader(ctx, b, key, offset, length)
	if httpStatus(err) == http.StatusRequestedRangeNotSatisfiable {
		// S3, GCS and Azure refuse a range from the object's end on,
		// where a file:// bucket reads it short: past the end either way.
		return fail(fmt.Errorf("%w: %w", ErrPastEnd, err))
	}
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	if size := r.Size(); offset > size || length > size-offset {
		return fail(fmt.Errorf("%w (%d bytes)", ErrPastEnd, size))
	}
	data := make([]byte, length)
	if _, err := readFull(r, data); err != nil {
		return fail(err)
	}
	return data, nil
}

// Close closes every bucket opened so far.
func (bs *Buckets) Close() error {
	bs.mu.Lock()
	open := bs.open
	bs.open = nil
	bs.mu.Unlock()
	var errs []error
	for name, o := range open {
		if strings.HasPrefix(name, baseName) {
			continue // closed with its prefixes
		}
		select {
		case <-o.done:
			if o.b != nil {
				errs = append(errs, o.b.Close())
			}
		default:
			// An open under way, perhaps for good (a store whose
			// credentials never answer), is not waited for: its bucket
			// is closed if it comes.
			go func() {
				<-o.done
				if o.b != nil {
					o.b.Close()
				}
			}()
		}
	}
	return errors.Join(errs...)
}
