package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/blob"

	"dcd/internal/devserver"
)

// fakeGCS starts a GCS server (fake-gcs-server, which scripts/setup.sh
// installs), creates a bucket and opens it by its gs:// URL, with the
// server in this process's environment as a worker would find it.
func fakeGCS(t *testing.T, name string) *blob.Bucket {
	t.Helper()
	bin, err := devserver.FakeGCSBinary()
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(t.TempDir(), "fake-gcs-server.log"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := devserver.StartGCS(bin, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		log.Close()
	})
	for _, kv := range devserver.GCSEnv(srv.Host) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	url, err := srv.Bucket(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// What DCD does with a bucket works on GCS's JSON API (checkStore).
func TestGCSStore(t *testing.T) {
	checkStore(t, fakeGCS(t, "dcd-store"))
}

// ListFolders lists on GCS's JSON API what List lists, and from a key on
// it begins there (startOffset). fake-gcs-server gives every page of a
// listing by folders every folder, where GCS counts each among one page's
// results (maxResults is items and prefixes together): at 100 keys a
// request this tree's listings by folders are a page each, as they would
// be on GCS; at 2, ListFolders must refuse the listing rather than lose
// the keys after its first page.
func TestGCSListFolders(t *testing.T) {
	b := fakeGCS(t, "dcd-folders")
	checkListFolders(t, b, 100)
	checkListsFromKey(t, b)

	defer func(n, r int) { pageSize, requestPage = n, r }(pageSize, requestPage)
	pageSize, requestPage = 2, 2
	n := 0
	err := ListFolders(context.Background(), b, "pool/a/", "", func(*blob.ListObject) error {
		n++
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "not in key order") {
		t.Errorf("listing by folders whose pages repeat a later folder: %v after %d keys, want an error that they are not in key order", err, n)
	}
}
