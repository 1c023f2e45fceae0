package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"

	"dcd/internal/store/storetest"
)

// List goes through every page, in key order, and stops at fn's error.
func TestList(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const n = ListPageSize + 10
	for i := range n {
		if err := b.WriteAll(ctx, fmt.Sprintf("k/%06d", i), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	b.WriteAll(ctx, "other", nil, nil)
	var keys []string
	if err := List(ctx, b, &blob.ListOptions{Prefix: "k/"}, func(o *blob.ListObject) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != n || !slices.IsSorted(keys) || keys[n-1] != fmt.Sprintf("k/%06d", n-1) {
		t.Errorf("listed %d keys (sorted %v, last %q), want %d", len(keys), slices.IsSorted(keys), keys[len(keys)-1], n)
	}
	stop := errors.New("stop")
	if err := List(ctx, b, nil, func(*blob.ListObject) error { return stop }); err != stop {
		t.Errorf("List returned %v, want fn's error", err)
	}
}

// BenchmarkListFiles lists a file:// ImageFolder of 20,000 images, one page
// of blob's default size at a time and with List.
func BenchmarkListFiles(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	for i := range 20000 {
		sub := filepath.Join(dir, "pool", strconv.Itoa(i%10))
		os.MkdirAll(sub, 0o755)
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("%05d.png", i)), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	bk, err := Open(ctx, "file://"+dir)
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	count := func(n int) {
		if n != 20000 {
			b.Fatalf("listed %d files, want 20000", n)
		}
	}
	b.Run("pages=1000", func(b *testing.B) {
		for b.Loop() {
			n, it := 0, bk.List(&blob.ListOptions{Prefix: "pool/"})
			for {
				if _, err := it.Next(ctx); err == io.EOF {
					break
				} else if err != nil {
					b.Fatal(err)
				}
				n++
			}
			count(n)
		}
	})
	b.Run("List", func(b *testing.B) {
		for b.Loop() {
			n := 0
			if err := List(ctx, bk, &blob.ListOptions{Prefix: "pool/"}, func(*blob.ListObject) error { n++; return nil }); err != nil {
				b.Fatal(err)
			}
			count(n)
		}
	})
}

// A file:// bucket lists every file, in key order, where the driver's walk
// order differs from it at a page's end: folders "a" and "a b" hold keys
// that sort "a b/…" before "a/…".
func TestListFileFolders(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var want []string
	for _, folder := range []string{"a", "a b", "a-c", "a/x"} {
		for i := range 3 {
			key := fmt.Sprintf("pool/%s/%d.png", folder, i)
			want = append(want, key)
			if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(key)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, key), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	slices.Sort(want)
	b, err := Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	defer func(n int) { pageSize = n }(pageSize)
	for _, size := range []int{2, 5, ListPageSize} {
		pageSize = size
		for _, prefix := range []string{"pool/", "pool", "pool/a"} {
			var got []string
			if err := List(ctx, b, &blob.ListOptions{Prefix: prefix}, func(o *blob.ListObject) error {
				got = append(got, o.Key)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("pages of %d, prefix %q: listed %q, want %q", size, prefix, got, want)
			}
		}
	}
}

// A file:// bucket lists a symbolic link to a file as that file, with its
// size and time; one to a folder or to nothing is listed as it is, and
// LinkedFolder tells it.
func TestListFileLinks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	write("pool/cat/0.png", "x")
	write("elsewhere/big.png", strings.Repeat("y", 1000))
	write("elsewhere/dogs/0.png", "z")
	link("../../elsewhere/big.png", "pool/cat/1.png")
	link("../elsewhere/dogs", "pool/dog")
	link("../nowhere", "pool/gone")
	b, err := Open(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sizes, folders := map[string]int64{}, map[string]bool{}
	if err := ListFolders(ctx, b, "pool/", "", func(o *blob.ListObject) error {
		sizes[o.Key], folders[o.Key] = o.Size, LinkedFolder(ctx, b, o)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"pool/cat/0.png": false, "pool/cat/1.png": false, "pool/dog": true, "pool/gone": true}
	if sizes["pool/cat/1.png"] != 1000 || !maps.Equal(folders, want) {
		t.Errorf("sizes %v, linked folders %v; want pool/cat/1.png at the 1000 bytes it links to, folders %v", sizes, folders, want)
	}
}

// ListFolders lists what List lists, in the same order, whatever the
// prefix, over more folders than it lists ahead and folders longer than
// the pages it lists ahead, and with folders so small that it lists the
// rest flat; and it stops at fn's error.
func TestListFolders(t *testing.T) {
	for _, url := range []string{"mem://", "file://" + t.TempDir()} {
		b, err := Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		checkListFolders(t, b, 2, 100)
		b.Close()
	}
}

// checkListFolders is TestListFolders on b, an empty bucket, at each of
// requests keys a request.
func checkListFolders(t *testing.T, b *blob.Bucket, requests ...int) {
	t.Helper()
	ctx := context.Background()
	defer func(n, r int) { pageSize, requestPage = n, r }(pageSize, requestPage)
	var keys []string
	for i := range 2 * FoldersAhead { // tiny folders
		keys = append(keys, fmt.Sprintf("pool/%02d/x.png", i))
	}
	for i := range 3 * folderPages * 2 { // a long folder at two keys a request
		keys = append(keys, fmt.Sprintf("pool/a/%03d.png", i))
	}
	keys = append(keys, "pool/a b/1.png", "pool/a-c/1.png", "pool/a/x/nested.png", "pool/readme", "pool/z", "poolside/1.png", "top")
	for _, k := range keys {
		if err := b.WriteAll(ctx, k, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	listed := func(list func(func(*blob.ListObject) error) error) []string {
		var got []string
		if err := list(func(o *blob.ListObject) error {
			got = append(got, o.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	defer func() { testHookFlat = func() {} }()
	for _, request := range requests {
		pageSize, requestPage = request, request
		for _, prefix := range []string{"pool/", "pool", "pool/a", "pool/a/", "", "none/"} {
			want := listed(func(fn func(*blob.ListObject) error) error {
				return List(ctx, b, &blob.ListOptions{Prefix: prefix}, fn)
			})
			if prefix == "pool/" && len(want) != len(keys)-2 {
				t.Fatalf("List listed %d keys under pool/, want %d", len(want), len(keys)-2)
			}
			flat := false
			testHookFlat = func() { flat = true }
			got := listed(func(fn func(*blob.ListObject) error) error { return ListFolders(ctx, b, prefix, "", fn) })
			if !slices.Equal(got, want) {
				t.Errorf("%d keys a request, prefix %q: ListFolders listed %q, List %q", request, prefix, got, want)
			}
			// From any key on: a key listed, the least key after it, a
			// folder, keys that are not there.
			var froms []string
			for i := 0; i < len(want); i += 5 {
				froms = append(froms, want[i], want[i]+"\x00")
			}
			froms = append(froms, "pool/a/", "pool/a", "pool/a/x/", "pool/0", "pool/zz", "a", "zzz")
			for _, from := range froms {
				got := listed(func(fn func(*blob.ListObject) error) error { return ListFolders(ctx, b, prefix, from, fn) })
				i, _ := slices.BinarySearch(want, from)
				if !slices.Equal(got, want[i:]) {
					t.Errorf("%d keys a request, prefix %q, from %q: ListFolders listed %q, want %q", request, prefix, from, got, want[i:])
				}
			}
			// 16 folders of a key each, or objects beside the folders:
			// flat where a request lists more keys than they hold (on an
			// object store: file:// walks its folders).
			if wantFlat := request == 100 && (prefix == "pool/" || prefix == "pool/a/") && !isLocal(b); flat != wantFlat {
				t.Errorf("%d keys a request, prefix %q: listed the rest flat %v, want %v", request, prefix, flat, wantFlat)
			}
		}
	}
	stop := errors.New("stop")
	n := 0
	if err := ListFolders(ctx, b, "pool/", "", func(*blob.ListObject) error {
		if n++; n == 20 {
			return stop
		}
		return nil
	}); err != stop || n != 20 {
		t.Errorf("ListFolders returned %v after %d objects, want fn's error after 20", err, n)
	}
}

// ListFolders lists on a real S3 server (versitygw), whose delimited
// listing and continuation tokens are S3's, what List lists.
func TestS3ListFolders(t *testing.T) {
	b := versityGW(t, "dcd-folders")
	checkListFolders(t, b, 2, 100)
	checkListsFromKey(t, b)
}

// What DCD does with a bucket works on S3 (checkStore).
func TestS3Store(t *testing.T) {
	checkStore(t, versityGW(t, "dcd-store"))
}

// A bucket opened with prefix= lists, from a key too, what one without
// does (startingAt must give the store the key with the prefix, or every
// key under it sorts before it).
func TestS3ListFoldersPrefixed(t *testing.T) {
	b := versityGW(t, "dcd-prefixed", "prefix=dcd/")
	checkListFolders(t, b, 2, 100)
	checkListsFromKey(t, b)
}

// versityGW opens a new bucket of a real S3 server (versitygw) that runs
// for the test, with the URL options query besides the server's.
func versityGW(t *testing.T, name string, query ...string) *blob.Bucket {
	t.Helper()
	srv := storetest.S3Server(t)
	return openServed(t, srv.Bucket, name, query...)
}

// checkListsFromKey checks that a store whose listing takes a key to begin
// at (S3, GCS) lists from it: the long folder's last key takes a request
// or two of two keys, not the 24 before it.
func checkListsFromKey(t *testing.T, b *blob.Bucket) {
	defer func(n, r int) { pageSize, requestPage = n, r }(pageSize, requestPage)
	pageSize, requestPage = 2, 2
	var pages atomic.Int32 // the folders' listings run on their own goroutines
	testHookPage = func() { pages.Add(1) }
	defer func() { testHookPage = func() {} }()
	if err := ListFolders(context.Background(), b, "pool/a/", "pool/a/047.png", func(*blob.ListObject) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := pages.Load(); n > 6 {
		t.Errorf("listing from the long folder's last key took %d requests, want it to begin there", n)
	}
}

// startingAt asks S3 to list after the key before from, on the first
// request only, and GCS from it, unless gcsblob would escape the key.
func TestStartingAt(t *testing.T) {
	listing := func(from string, in any) {
		opts := startingAt(nil, &blob.ListOptions{}, from)
		if err := opts.BeforeList(func(as any) bool { // as a driver's: its own request's type only
			ok := false
			switch p := as.(type) {
			case **s3.ListObjectsV2Input:
				*p, ok = in.(*s3.ListObjectsV2Input)
			case **s3.ListObjectsInput:
				*p, ok = in.(*s3.ListObjectsInput)
			case **storage.Query:
				*p, ok = in.(*storage.Query)
			}
			return ok
		}); err != nil {
			t.Fatal(err)
		}
	}
	first, later := &s3.ListObjectsV2Input{}, &s3.ListObjectsV2Input{ContinuationToken: aws.String("t")}
	listing("a/7.png", first)
	listing("a/7.png", later)
	if aws.ToString(first.StartAfter) != "a/7.pn" || later.StartAfter != nil {
		t.Errorf("S3: StartAfter %q on the first request, %v on a later one; want \"a/7.pn\", none", aws.ToString(first.StartAfter), later.StartAfter)
	}
	legacy := &s3.ListObjectsInput{}
	listing("a/7.png\x00", legacy)
	if aws.ToString(legacy.Marker) != "a/7.png" {
		t.Errorf("S3's older listing: Marker %q, want \"a/7.png\"", aws.ToString(legacy.Marker))
	}
	for from, want := range map[string]string{"a/7.png": "a/7.pn", "a/../7.png": "", "a/__0x2f__.png": "", "a/7\n.png": ""} {
		q := &storage.Query{}
		listing(from, q)
		if q.StartOffset != want {
			t.Errorf("GCS from %q: StartOffset %q, want %q", from, q.StartOffset, want)
		}
	}
}

// keyOrder lets a listing's keys through in key order, skips a repeat of
// the last one, and fails for good at one before it.
func TestKeyOrder(t *testing.T) {
	o := keyOrder{prefix: "pool/"}
	for _, step := range []struct {
		key    string
		repeat bool
	}{{"pool/a-b/1.png", false}, {"pool/a/1.png", false}, {"pool/a/1.png", true}, {"pool/a/2.png", false}} {
		if repeat, err := o.next(step.key); repeat != step.repeat || err != nil {
			t.Fatalf("%q: repeat %v, %v; want %v, nil", step.key, repeat, err, step.repeat)
		}
	}
	_, err := o.next("pool/a-b/2.png") // as a hierarchical namespace lists
	var app *temporal.ApplicationError
	if !errors.As(err, &app) || !app.NonRetryable() || !strings.Contains(err.Error(), `"pool/a-b/2.png" after "pool/a/2.png"`) {
		t.Errorf("a key before the last: %v, want a non-retryable error naming both", err)
	}
}

// A bucket that does not open is named without its query, which may hold
// a token, in an error that errors.Is and As still see as the driver's,
// and whose history (each cause a failure with its text) holds no token.
func TestOpenErrorRedacted(t *testing.T) {
	_, err := Open(context.Background(), "file:///nonexistent-dcd-dir?token=SECRET123&create_dir=nope")
	if err == nil || strings.Contains(err.Error(), "SECRET123") || !strings.Contains(err.Error(), "file:///nonexistent-dcd-dir") {
		t.Errorf("open with a token in the query: %v; want an error naming the bucket without it", err)
	}
	for f := temporal.GetDefaultFailureConverter().ErrorToFailure(err); f != nil; f = f.GetCause() {
		if strings.Contains(f.GetMessage(), "SECRET123") {
			t.Errorf("a failure in the history shows the token: %q", f.GetMessage())
		}
	}
	_, err = Open(context.Background(), "file:///tmp?base_url=http://x&secret_key_path=/nonexistent-dcd-dir/key")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("open with a missing key file: %v; want the driver's cause seen through it", err)
	}
	_, err = Open(context.Background(), "file:///nonexistent-dcd-dir/storage")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "create_dir=1") {
		t.Errorf("open of a folder not made: %v; want the driver's cause and how to have it made", err)
	}
}
