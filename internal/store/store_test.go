package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// checkStore checks what DCD does with a bucket on an object store's
// server: whole and ranged reads, conditional writes, Arrow files,
// existence, listing, and a missing key failing for good instead of being
// retried.
func checkStore(t *testing.T, b *blob.Bucket) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 1000)
	if err := WriteAll(ctx, b, "pool/a.tar", data); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadAll(ctx, b, "pool/a.tar"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v; want %d", len(got), err, len(data))
	}
	bs := &Buckets{}
	if got, err := bs.ReadRange(ctx, b, "pool/a.tar", 1234, 20); err != nil || string(got) != "45678901234567890123" {
		t.Errorf("range read: %q, %v", got, err)
	}
	// Ranges past the end, as a manifest of another archive would give:
	// refused for good, before a buffer of the size claimed is made.
	// Past the end on every store (S3, GCS and Azure refuse a range from
	// the end on, 416, where a file reads short), as the embedding's
	// rejects tell an image's own fault from the store's.
	for _, r := range [][2]int64{{9990, 20}, {10000, 10}, {20000, 10}, {0, 1 << 50}} {
		if got, err := bs.ReadRange(ctx, b, "pool/a.tar", r[0], r[1]); err == nil || !Permanent(err) || Transient(err) || !errors.Is(err, ErrPastEnd) {
			t.Errorf("bytes %d+%d of 10000: %d bytes, %v; want a permanent error, past the end", r[0], r[1], len(got), err)
		}
	}
	// A claim (a pack's pack.json) is written only where none is.
	if err := b.WriteAll(ctx, "pool/a.tar", []byte("claim"), &blob.WriterOptions{IfNotExist: true}); gcerrors.Code(err) != gcerrors.FailedPrecondition {
		t.Errorf("a write IfNotExist over an object: %v, want FailedPrecondition", err)
	}
	if err := b.WriteAll(ctx, "claims/new", []byte("claim"), &blob.WriterOptions{IfNotExist: true}); err != nil {
		t.Errorf("a write IfNotExist of a new object: %v", err)
	}
	if ok, err := Exists(ctx, b, "pool/a.tar"); !ok || err != nil {
		t.Errorf("Exists(pool/a.tar) = %v, %v", ok, err)
	}
	_, err := ReadAll(ctx, b, "pool/missing.tar")
	var app *temporal.ApplicationError
	if err == nil || !errors.As(Classify(err, "pool/missing.tar"), &app) || !app.NonRetryable() {
		t.Errorf("a missing key: %v, want a non-retryable error", err)
	}
	// An Arrow file: streamed to a block blob, read back whole.
	mem := memory.NewGoAllocator()
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)
	bld := array.NewRecordBuilder(mem, schema)
	bld.Field(0).(*array.Int64Builder).AppendValues([]int64{7, 8, 9}, nil)
	rec := bld.NewRecord()
	bld.Release()
	err = WriteArrow(ctx, b, "features/0.arrow", schema, mem, rec)
	rec.Release()
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenArrow(ctx, b, "features/0.arrow", mem)
	if err != nil {
		t.Fatal(err)
	}
	back, err := f.RecordAt(0)
	if err != nil {
		t.Fatal(err)
	}
	if ids := back.Column(0).(*array.Int64).Int64Values(); len(ids) != 3 || ids[0] != 7 || ids[2] != 9 {
		t.Errorf("Arrow file read back %v", ids)
	}
	back.Release()
	f.Close()

	var keys []string
	it := b.List(&blob.ListOptions{Prefix: "pool/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, obj.Key)
	}
	if len(keys) != 1 || keys[0] != "pool/a.tar" {
		t.Errorf("listed %q", keys)
	}
}

// What DCD does with a bucket works on a file:// bucket (checkStore).
func TestFileStore(t *testing.T) {
	b, err := Open(context.Background(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkStore(t, b)
}

// ReadAtMost refuses an object larger than its limit before reading it,
// a WebDataset member by its listed size, for good (Permanent).
func TestReadAtMost(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "big.png", make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	var bs Buckets
	if data, err := bs.ReadAtMost(ctx, b, "big.png", 100); err != nil || len(data) != 100 {
		t.Errorf("100 bytes at most 100: %d, %v", len(data), err)
	}
	for _, ref := range []string{"big.png", "p.tar#00012.png@512+100"} {
		if _, err := bs.ReadAtMost(ctx, b, ref, 99); !errors.Is(err, ErrTooLarge) || !Permanent(err) || !strings.Contains(err.Error(), "more than 99") {
			t.Errorf("%s at most 99: %v, want a permanent ErrTooLarge", ref, err)
		}
	}
}

// A file:// store's errors carry the kernel's errno, which is a net.Error:
// a missing file is not taken for a store failing for a while.
func TestTransientFile(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = ReadAll(ctx, b, "gone.onnx")
	if err == nil || Transient(err) || !Permanent(err) {
		t.Errorf("a missing file: %v, Transient %v, Permanent %v; want permanent only", err, Transient(err), Permanent(err))
	}
	// Keys no file can be at, which fileblob does not code NotFound: a
	// path through a file, a name too long. An image's row naming one is
	// a reject, not a shard failing.
	if err := WriteAll(ctx, b, "cat.jpg", []byte("jpeg")); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"cat.jpg/1.jpg", strings.Repeat("n", 300) + ".jpg"} {
		if _, err := ReadAll(ctx, b, key); err == nil || Transient(err) || !Permanent(err) {
			t.Errorf("%.40s: %v, Transient %v, Permanent %v; want permanent only", key, err, Transient(err), Permanent(err))
		}
	}
	// A connection reset mid-body carries an errno too, in a net.OpError:
	// that one passes.
	reset := fmt.Errorf("store: read %q: %w", "big.tar", &net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}})
	if !Transient(reset) {
		t.Errorf("a connection reset: %v, not transient", reset)
	}
}

// A bucket URL holding a user or password, its own or its endpoint's, is
// refused before anything is opened, and the refusal quotes neither.
func TestCheckURLRefusesCredentials(t *testing.T) {
	for _, u := range []string{
		"s3://USER:S3CR3T@pool?region=us-east-1",
		"s3://pool?endpoint=http://USER:S3CR3T@127.0.0.1:9000&use_path_style=true",
		"s3://pool?endpoint=http%3A%2F%2FUSER%3AS3CR3T%40127.0.0.1%3A9000",
		"azblob://USER:S3CR3T@c",
		"file://USER:S3CR3T@/tmp/d",
	} {
		err := CheckURL(u)
		if err == nil || strings.Contains(err.Error(), "S3CR3T") || !strings.Contains(err.Error(), "environment") {
			t.Errorf("CheckURL(%q) = %v, want a refusal pointing at the environment", u, err)
		}
		if _, err := Open(context.Background(), u); err == nil || strings.Contains(err.Error(), "S3CR3T") {
			t.Errorf("Open(%q) = %v, want the same refusal", u, err)
		}
	}
	for _, u := range []string{"s3://pool?endpoint=http://127.0.0.1:9000&region=us-east-1", "file:///tmp/d", "mem://"} {
		if err := CheckURL(u); err != nil {
			t.Errorf("CheckURL(%q) = %v", u, err)
		}
	}
}
