package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

func TestSplitURL(t *testing.T) {
	for _, tc := range []struct{ in, bucket, key string }{
		{"s3://data/train/cat/1.jpg?region=eu-west-1", "s3://data?region=eu-west-1", "train/cat/1.jpg"},
		{"s3://data/a%20b/c.png?endpoint=http://127.0.0.1:9000&use_path_style=true", "s3://data?endpoint=http://127.0.0.1:9000&use_path_style=true", "a b/c.png"},
		{"gs://bucket/x.png", "gs://bucket", "x.png"},
		{"s3://bucket/prefix/", "s3://bucket", "prefix/"},
		{"s3://bucket", "s3://bucket", ""},
		{"file:///srv/images/cat/1.png", "file:///", "srv/images/cat/1.png"},
		{"file:///srv/images/?metadata=skip", "file:///?metadata=skip", "srv/images/"},
	} {
		b, k, err := SplitURL(tc.in)
		if err != nil || b != tc.bucket || k != tc.key {
			t.Errorf("SplitURL(%q) = %q, %q, %v; want %q, %q", tc.in, b, k, err, tc.bucket, tc.key)
			continue
		}
		back, err := JoinURL(b, k)
		if err != nil {
			t.Fatal(err)
		}
		if b2, k2, _ := SplitURL(back); b2 != b || k2 != k {
			t.Errorf("JoinURL(%q, %q) = %q, which splits into %q, %q", b, k, back, b2, k2)
		}
	}
	// mem:// buckets have no name, so no object URL can point into one.
	// No retry reads these: an error that says so at once (Permanent),
	// where a pass would otherwise try a shard for minutes.
	for _, bad := range []string{"file://host/x.png", "s3:///key", "mem://", "s3://b/img#1.jpg", "https://example.com/a.jpg", "s4://b/k"} {
		if _, _, err := SplitURL(bad); err == nil || !Permanent(fmt.Errorf("read: %w", err)) {
			t.Errorf("SplitURL(%q): %v, want a permanent error", bad, err)
		}
	}
	// A presigned URL's signature, refused, is not quoted: the error
	// reaches the pass's failure and its history.
	for _, signed := range []string{"https://acct.blob.core.windows.net/c/x.png?sv=2024&sig=SECRET", "https://b.s3.amazonaws.com/x.png?X-Amz-Signature=SECRET%zz"} {
		if _, _, err := SplitURL(signed); err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("SplitURL of a signed URL: %v, want an error without its signature", err)
		}
	}
}

// A file the worker may not read (EACCES; fileblob gives it no code) is
// refused for good, as an object S3 forbids is: an image's reject, not a
// shard retried for minutes. (As root, which reads a file of mode 000, the
// error is made, not met.)
func TestFileForbiddenPermanent(t *testing.T) {
	err := fmt.Errorf("store: read %q: %w", "img.png", &fs.PathError{Op: "open", Path: "/d/img.png", Err: syscall.EACCES})
	if !Permanent(err) {
		t.Errorf("%v: want a permanent error", err)
	}
}

func TestIsURL(t *testing.T) {
	for in, want := range map[string]bool{
		"s3://b/k": true, "file:///x": true, "gs://b": true, "azblob://c/k": true,
		"data/train/": false, "/data/x.png": false, "weird name://x": false, "://x": false,
	} {
		if IsURL(in) != want {
			t.Errorf("IsURL(%q) = %v", in, !want)
		}
	}
}

// Buckets opens each bucket once and reads keys of the default bucket and
// absolute URLs alike.
func TestBucketsReadAll(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cat"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cat", "1.png"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	def, err := Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	if err := def.WriteAll(ctx, "k", []byte("default"), nil); err != nil {
		t.Fatal(err)
	}
	var bs Buckets
	defer bs.Close()
	for ref, want := range map[string]string{"k": "default", "file://" + dir + "/cat/1.png": "one"} {
		got, err := bs.ReadAll(ctx, def, ref)
		if err != nil || string(got) != want {
			t.Errorf("ReadAll(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	b1, err := bs.Open(ctx, "file:///")
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := bs.Open(ctx, "file:///")
	if b1 != b2 || len(bs.open) != 1 {
		t.Errorf("file:/// opened %d times", len(bs.open))
	}
	b3, _ := bs.Open(ctx, "file:///?metadata=skip&create_dir=1")
	if b4, _ := bs.Open(ctx, "file:///?create_dir=1&metadata=skip"); b3 != b4 || len(bs.open) != 2 {
		t.Errorf("one bucket's options in two orders opened it %d times", len(bs.open)-1)
	}
	if _, err := bs.ReadAll(ctx, def, "file://"+dir+"/cat/missing.png"); err == nil {
		t.Error("reading a missing file: want an error")
	}
	// A manifest's URL with an option the driver refuses: its image is
	// unreadable for good, not a store to try again.
	for _, ref := range []string{"file://" + dir + "/cat/1.png?metdata=skip", "s3://b/1.png?region=us-east-1&use_path_style=maybe"} {
		if _, err := bs.ReadAll(ctx, def, ref); err == nil || !Permanent(err) || Transient(err) {
			t.Errorf("%s, an option misspelt or of a bad value: %v; want a permanent error", ref, err)
		}
	}
	// The worker's own setup is not the row's: a profile it lacks fails
	// the read for a retry, the image unrejected.
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	if _, err := bs.ReadAll(ctx, def, "s3://b/1.png?region=us-east-1&profile=nosuch"); err == nil || Permanent(err) || !strings.Contains(err.Error(), "profile, nosuch") {
		t.Errorf("a profile the worker lacks: %v; want an error that is not the image's", err)
	}
}

// Users' buckets on S3, GCS and Azure open through gocloud's own drivers,
// which must be linked into every binary that reads storage.
func TestCloudDriversLinked(t *testing.T) {
	for _, scheme := range []string{"s3", "gs", "azblob", "file", "mem"} {
		if !blob.DefaultURLMux().ValidBucketScheme(scheme) {
			t.Errorf("no driver for %s:// buckets", scheme)
		}
	}
}

// A file:// bucket stores each object as one file: no metadata sidecar
// beside it, whose MD5 and second file every write paid for. Objects an
// older DCD wrote with sidecars still read.
func TestFileBucketWritesNoSidecars(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := Open(ctx, "file://"+dir+"?create_dir=1")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "runs/r/features.arrow", []byte("rows")); err != nil {
		t.Fatal(err)
	}
	var files []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			files = append(files, rel)
		}
		return err
	})
	if len(files) != 1 || files[0] != filepath.Join("runs", "r", "features.arrow") {
		t.Errorf("bucket holds %q, want only runs/r/features.arrow", files)
	}
	attrs, err := b.Attributes(ctx, "runs/r/features.arrow")
	if err != nil || attrs.Size != 4 || attrs.ETag == "" {
		t.Errorf("attributes %+v, %v: want size 4 and an ETag", attrs, err)
	}

	// An object written with a sidecar, as by gocloud's default.
	old, err := blob.OpenBucket(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.WriteAll(ctx, "old", []byte("kept"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "old.attrs")); err != nil {
		t.Fatalf("gocloud's default wrote no sidecar (%v): the test no longer shows the difference", err)
	}
	if got, err := ReadAll(ctx, b, "old"); err != nil || string(got) != "kept" {
		t.Errorf("reading an object with a sidecar: %q, %v", got, err)
	}

	for _, u := range []string{"file:///d?metadata=skip&no_tmp_dir=1", "s3://bucket?region=x", "mem://"} {
		if got := fileOptions(u); got != u {
			t.Errorf("fileOptions(%q) = %q, want it unchanged", u, got)
		}
	}
}

// A file:// bucket on another filesystem than the temporary folder (a data
// disk) takes writes, and so does an object named by a file:// URL there:
// gocloud's default writes each object to os.TempDir and renames it into
// place, which fails across filesystems.
func TestFileBucketOnAnotherFilesystem(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tmp, err := os.MkdirTemp("/dev/shm", "dcd-store-test-")
	if err != nil {
		t.Skipf("no /dev/shm for a second filesystem: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	if sameFilesystem(dir, tmp) {
		t.Skipf("%s and %s are on one filesystem", dir, tmp)
	}
	t.Setenv("TMPDIR", tmp)

	old, err := blob.OpenBucket(ctx, "file://"+dir+"?metadata=skip")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.WriteAll(ctx, "k", []byte("v"), nil); err == nil {
		t.Fatal("gocloud's default wrote across filesystems: the test no longer shows the difference")
	}

	b, err := Open(ctx, "file://"+dir+"/new?create_dir=1")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "runs/r/features.arrow", []byte("rows")); err != nil {
		t.Fatalf("write across filesystems: %v", err)
	}
	if got, err := ReadAll(ctx, b, "runs/r/features.arrow"); err != nil || string(got) != "rows" {
		t.Errorf("read back %q, %v", got, err)
	}

	// A URL's object lives in the root bucket (file:///), whose writes may
	// land on any filesystem: here TMPDIR is on the root's, the object not.
	t.Setenv("TMPDIR", dir)
	var bs Buckets
	defer bs.Close()
	rb, key, err := bs.Resolve(ctx, b, "file://"+tmp+"/out/archive.tar")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteAll(ctx, rb, key, []byte("tar")); err != nil {
		t.Fatalf("write to a URL on another filesystem: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(tmp, "out", "archive.tar")); err != nil || string(got) != "tar" {
		t.Errorf("read back %q, %v", got, err)
	}
}

// TestReadAllWhole reads objects of several sizes, none and past io.ReadAll's
// first 512 bytes included, from a file:// and a mem:// bucket, whole; a
// missing one stays NotFound, which retries and rejects are decided by.
func TestReadAllWhole(t *testing.T) {
	ctx := context.Background()
	for _, url := range []string{"file://" + t.TempDir(), "mem://"} {
		b, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		for _, n := range []int{0, 1, 513, 300 << 10} {
			want := bytes.Repeat([]byte{byte(n)}, n)
			key := fmt.Sprintf("obj-%d", n)
			if err := b.WriteAll(ctx, key, want, nil); err != nil {
				t.Fatal(err)
			}
			if got, err := ReadAll(ctx, b, key); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: ReadAll of %d bytes = %d bytes, %v", url, n, len(got), err)
			}
		}
		if _, err := ReadAll(ctx, b, "missing"); gcerrors.Code(err) != gcerrors.NotFound {
			t.Errorf("%s: ReadAll of a missing object: %v, want NotFound", url, err)
		}
	}
}

// The default bucket is the working directory's .dcd/storage, whatever
// characters its path holds.
func TestDefaultURLEscapes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a#b 50%")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	t.Setenv("DCD_STORAGE", "")
	ctx := context.Background()
	b, err := Open(ctx, DefaultURL())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".dcd", "storage", "x")); err != nil {
		t.Errorf("DefaultURL() = %s wrote elsewhere: %v", DefaultURL(), err)
	}
}

// A bucket's folder bind-mounted apart from the temporary folder, on the
// same disk (a container's volumes), takes writes: the rename between
// mounts fails as between filesystems, though both have one st_dev.
func TestFileBucketOnABindMount(t *testing.T) {
	ctx := context.Background()
	disk := t.TempDir()
	for _, d := range []string{"data", "tmp", "mnt"} {
		if err := os.Mkdir(filepath.Join(disk, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mnt := filepath.Join(disk, "mnt")
	if out, err := exec.Command("mount", "--bind", filepath.Join(disk, "data"), mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount here (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	t.Setenv("TMPDIR", filepath.Join(disk, "tmp"))

	old, err := blob.OpenBucket(ctx, "file://"+mnt+"?metadata=skip")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.WriteAll(ctx, "k", []byte("v"), nil); err == nil {
		t.Fatal("gocloud's default wrote across a bind mount: the test no longer shows the difference")
	}
	b, err := Open(ctx, "file://"+mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "runs/r/eval.json", []byte("{}")); err != nil {
		t.Fatalf("write to a bind mount: %v", err)
	}
	if got, err := ReadAll(ctx, b, "runs/r/eval.json"); err != nil || string(got) != "{}" {
		t.Errorf("read back %q, %v", got, err)
	}
}

// A worker keeps MaxBuckets buckets open at most, those used last: rows
// naming a bucket each (options differ) do not open clients without end,
// and a worker that has met that many over its life still opens the next.
func TestBucketsBounded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var bs Buckets
	defer bs.Close()
	url := func(i int) string { return fmt.Sprintf("file://%s?prefix=%d/", dir, i) }
	first := map[int]*blob.Bucket{}
	for i := range MaxBuckets {
		b, err := bs.Open(ctx, url(i))
		if err != nil {
			t.Fatal(err)
		}
		first[i] = b
	}
	if b, _ := bs.Open(ctx, url(0)); b != first[0] { // 0 used again: 1 is the least recent
		t.Fatal("bucket 0 opened twice")
	}
	more, err := bs.Open(ctx, url(MaxBuckets))
	if err != nil {
		t.Fatalf("bucket %d: %v", MaxBuckets+1, err)
	}
	if err := more.WriteAll(ctx, "k", []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	if len(bs.open) != MaxBuckets {
		t.Errorf("%d buckets kept, want %d", len(bs.open), MaxBuckets)
	}
	if b, _ := bs.Open(ctx, url(0)); b != first[0] {
		t.Error("bucket 0, used last but one, was dropped")
	}
	b1, _ := bs.Open(ctx, url(1))
	if b1 == first[1] {
		t.Error("bucket 1, used least recently, was kept")
	}
	// The dropped one is not closed: a read may still hold it.
	if _, err := first[1].Attributes(ctx, "k"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("the dropped bucket: %v, want it open (a NotFound)", err)
	}
}

// A bucket Buckets drops is collected with what Open keeps of it (its
// prefix=): a worker meeting buckets without end holds a bounded number.
func TestDroppedBucketsCollected(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	count := func() (n int) {
		prefixes.Range(func(any, any) bool { n++; return true })
		return n
	}
	before := count()
	var bs Buckets
	defer bs.Close()
	for i := range 3 * MaxBuckets {
		if _, err := bs.Open(ctx, fmt.Sprintf("file://%s?prefix=%d/", dir, i)); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); count() > before+MaxBuckets; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d prefixes kept after %d buckets opened, %d kept open", count()-before, 3*MaxBuckets, MaxBuckets)
		}
		runtime.GC()
	}
}

// slowOpens makes the opens of the URLs hold picks wait until the returned
// release is called (once it is, or the test ends), and counts them.
func slowOpens(t *testing.T, hold func(url string) bool) (release func(), opens *atomic.Int32) {
	gate := make(chan struct{})
	opens = new(atomic.Int32)
	real := openStore
	openStore = func(ctx context.Context, u string) (*blob.Bucket, error) {
		if hold(u) {
			opens.Add(1)
			<-gate
		}
		return real(ctx, u)
	}
	release = sync.OnceFunc(func() { close(gate) })
	t.Cleanup(func() { release(); openStore = real })
	return release, opens
}

// A bucket being opened (its store's config and credentials loaded) holds
// up the reads of that bucket alone: the buckets already open answer.
// Reads that wait for it share its one open.
func TestBucketOpenedAside(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	slow, fast := "file://"+dir+"?prefix=slow/", "file://"+dir+"?prefix=fast/"
	let, opens := slowOpens(t, func(u string) bool { return u == slow })
	var bs Buckets
	defer bs.Close()
	if _, err := bs.Open(ctx, fast); err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := bs.Open(ctx, slow)
			opened <- err
		}()
	}
	for opens.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		_, err := bs.Open(ctx, fast)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an open bucket waited for another bucket's open")
	}
	let()
	for range 2 {
		if err := <-opened; err != nil {
			t.Fatal(err)
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("two reads at once opened the bucket %d times, want once", n)
	}
}

// An open that hangs (a store's credentials that never answer) holds up
// no read past its context, the read that began it included, and goes on
// for the reads after it: the bucket is opened once.
func TestBucketOpenGivesUpWithItsRead(t *testing.T) {
	dir := t.TempDir()
	slow := "file://" + dir
	let, opens := slowOpens(t, func(string) bool { return true })
	var bs Buckets
	defer bs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := bs.Open(ctx, slow)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the read that began the open: %v, want its deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read that began a hanging open waited past its deadline")
	}
	let()
	if _, err := bs.Open(context.Background(), slow); err != nil {
		t.Fatal(err)
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("the bucket was opened %d times, want once", n)
	}
}

// Closing the buckets does not wait for an open that hangs: a worker
// stopping, or a walk ending, would hang with it.
func TestBucketsCloseLeavesAHangingOpen(t *testing.T) {
	slowOpens(t, func(string) bool { return true })
	var bs Buckets
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := bs.Open(ctx, "file://"+t.TempDir()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hanging open: %v, want its read's deadline", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- bs.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for an open that hangs")
	}
}
