package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"

	"dcd/internal/devserver"
)

// fakeGCS starts a GCS server (fake-gcs-server, which scripts/setup.sh
// installs), creates a bucket and opens it by its gs:// URL, with the
// server in this process's environment as a worker would find it.
func fakeGCS(t *testing.T, name string, query ...string) *blob.Bucket {
	t.Helper()
	bin, err := devserver.FakeGCSBinary()
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer // written by one goroutine at a time (exec.Cmd)
	srv, err := devserver.StartGCS(bin, &log)
	if err != nil {
		t.Fatalf("%v:\n%s", err, log.Bytes())
	}
	t.Cleanup(srv.Stop)
	t.Setenv("STORAGE_EMULATOR_HOST", srv.Host)
	return openServed(t, srv.Bucket, name, query...)
}

// What DCD does with a bucket works on GCS's JSON API (checkStore).
func TestGCSStore(t *testing.T) {
	checkStore(t, fakeGCS(t, "dcd-store"))
}

// So too on a bucket opened with prefix= (TestS3ListFoldersPrefixed).
func TestGCSListFoldersPrefixed(t *testing.T) {
	b := fakeGCS(t, "dcd-prefixed", "prefix=dcd/")
	checkListFolders(t, b, 100)
	checkListsFromKey(t, b)
}

// ListFolders lists on GCS's JSON API what List lists, and from a key on
// it begins there (startOffset). fake-gcs-server gives every page of a
// listing by folders every folder at or after the page's start, where GCS
// counts each among one page's results (maxResults is items and prefixes
// together): at 100 keys a request this tree's listings by folders are a
// page each, as they would be on GCS; at 2, ListFolders must refuse the
// listing for good rather than lose the keys after its first page.
func TestGCSListFolders(t *testing.T) {
	b := fakeGCS(t, "dcd-folders")
	checkListFolders(t, b, 100)
	checkListsFromKey(t, b)

	defer func(n, r int) { pageSize, requestPage = n, r }(pageSize, requestPage)
	pageSize, requestPage = 2, 2
	// Flat, a listing goes on page after page by GCS's page tokens.
	var all, flat []string
	it := b.List(nil) // a page of up to 1,000 keys
	for {
		o, err := it.Next(context.Background())
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, o.Key)
	}
	if err := listFlat(context.Background(), b, "pool/", "pool/a/040.png", func(o *blob.ListObject) error {
		flat = append(flat, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	i := slices.Index(all, "pool/a/040.png")
	j := slices.Index(all, "poolside/1.png")
	if len(all) < 80 || i < 0 || j < i || !slices.Equal(flat, all[i:j]) {
		t.Errorf("flat from pool/a/040.png, two keys a request: %q, want %q", flat, all[max(i, 0):max(j, 0)])
	}

	n := 0
	err := ListFolders(context.Background(), b, "pool/a/", "", func(*blob.ListObject) error {
		n++
		return nil
	})
	var app *temporal.ApplicationError
	if !errors.As(err, &app) || !app.NonRetryable() || !strings.Contains(err.Error(), "not in key order") {
		t.Errorf("listing by folders whose pages repeat a later folder (fake-gcs-server's): %v after %d keys, want a non-retryable error that they are not in key order", err, n)
	}
}

// openServed opens a new bucket named name on a test server (its Bucket
// makes it and returns its URL), closed when the test ends.
func openServed(t *testing.T, bucket func(context.Context, string) (string, error), name string, query ...string) *blob.Bucket {
	t.Helper()
	url, err := bucket(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range query {
		if strings.Contains(url, "?") {
			url += "&" + q
		} else {
			url += "?" + q
		}
	}
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
