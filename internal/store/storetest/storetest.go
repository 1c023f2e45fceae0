// Package storetest has a bucket for tests that hold or fail a read or a
// write: a store that goes down mid-plan, a cache entry completed between
// two reads.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"

	"dcd/internal/devserver"
)

// ErrMissing, returned by a hook, reads as an object not found.
var ErrMissing = errors.New("not found (test hook)")

// Hooks are called ahead of each read and write of a Hooked bucket, when
// set; their error fails the read or write.
type Hooks struct {
	BeforeRead, BeforeWrite func(ctx context.Context, key string) error
}

// Hooked is in with h's hooks ahead of its reads and writes. It reads,
// writes, lists, deletes and tells attributes, and refuses a read from an
// object's end on, as S3, GCS and Azure do (416), where mem:// and file://
// read nothing.
func Hooked(in *blob.Bucket, h *Hooks) *blob.Bucket {
	return blob.NewBucket(&hooked{in: in, h: h})
}

type hooked struct {
	driver.Bucket // the rest: not called
	in            *blob.Bucket
	h             *Hooks
}

func (b *hooked) NewRangeReader(ctx context.Context, key string, off, n int64, _ *driver.ReaderOptions) (driver.Reader, error) {
	if b.h.BeforeRead != nil {
		if err := b.h.BeforeRead(ctx, key); err != nil {
			return nil, err
		}
	}
	if off > 0 {
		if a, err := b.in.Attributes(ctx, key); err == nil && off >= a.Size {
			return nil, fmt.Errorf("storetest: %q: range from %d, its end: 416 Requested Range Not Satisfiable", key, off)
		}
	}
	r, err := b.in.NewRangeReader(ctx, key, off, n, nil)
	if err != nil {
		return nil, err
	}
	return reader{r}, nil
}

func (b *hooked) Attributes(ctx context.Context, key string) (*driver.Attributes, error) {
	a, err := b.in.Attributes(ctx, key)
	if err != nil {
		return nil, err
	}
	return &driver.Attributes{ModTime: a.ModTime, Size: a.Size, ETag: a.ETag}, nil
}

func (b *hooked) NewTypedWriter(ctx context.Context, key, contentType string, _ *driver.WriterOptions) (driver.Writer, error) {
	if b.h.BeforeWrite != nil {
		if err := b.h.BeforeWrite(ctx, key); err != nil {
			return nil, err
		}
	}
	return b.in.NewWriter(ctx, key, &blob.WriterOptions{ContentType: contentType})
}

func (b *hooked) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	token := opts.PageToken
	if len(token) == 0 {
		token = blob.FirstPageToken
	}
	size := opts.PageSize
	if size <= 0 {
		size = 1000 // blob's default
	}
	objs, next, err := b.in.ListPage(ctx, token, size, &blob.ListOptions{Prefix: opts.Prefix, Delimiter: opts.Delimiter})
	if err != nil {
		return nil, err
	}
	page := &driver.ListPage{NextPageToken: next}
	for _, o := range objs {
		page.Objects = append(page.Objects, &driver.ListObject{Key: o.Key, ModTime: o.ModTime, Size: o.Size, MD5: o.MD5, IsDir: o.IsDir})
	}
	return page, nil
}

func (b *hooked) Delete(ctx context.Context, key string, _ *driver.DeleteOptions) error {
	return b.in.Delete(ctx, key)
}

func (b *hooked) ErrorCode(err error) gcerrors.ErrorCode {
	if errors.Is(err, ErrMissing) {
		return gcerrors.NotFound
	}
	return gcerrors.Code(err)
}

func (b *hooked) As(any) bool             { return false }
func (b *hooked) ErrorAs(error, any) bool { return false }
func (b *hooked) Close() error            { return nil }

type reader struct{ *blob.Reader }

func (r reader) Attributes() *driver.ReaderAttributes {
	return &driver.ReaderAttributes{ModTime: r.ModTime(), Size: r.Size()}
}

func (r reader) As(any) bool { return false }

// S3Server starts a real S3 server (versitygw, which `make setup`
// installs: missing, the test fails, for CI must not skip the S3 path
// silently) over a fresh folder for t, stopped when t ends, and puts its
// keys in the environment for t.
func S3Server(t testing.TB) *devserver.S3 {
	t.Helper()
	bin, err := devserver.VersityGWBinary()
	if err != nil {
		t.Fatalf("%v: run `make setup` (scripts/setup.sh installs it)", err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := devserver.StartS3(bin, t.TempDir(), logf)
	if err != nil {
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("%v:\n%s", err, log)
	}
	t.Cleanup(func() {
		srv.Stop()
		logf.Close()
	})
	for _, kv := range devserver.S3Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return srv
}
