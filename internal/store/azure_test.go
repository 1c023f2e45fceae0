package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/blob"
)

// azuriteKey is the key of Azurite's built-in account devstoreaccount1,
// which Microsoft publishes for the emulator: not a secret.
const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// azurite starts Azurite, Microsoft's Azure Blob Storage server, which
// scripts/setup.sh installs (env DCD_AZURITE, else under ~/.cache/dcd),
// behind a proxy that counts the connections made to it. It creates a
// container and returns its azblob:// URL, with the credentials in this
// process's environment as a worker would have them.
func azurite(t *testing.T, name string) (url string, conns *atomic.Int64) {
	t.Helper()
	bin := os.Getenv("DCD_AZURITE")
	if bin == "" {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, ".cache", "dcd", "azurite-3.37.0", "node_modules", ".bin", "azurite-blob")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Azurite not found at %s: run `make setup` (scripts/setup.sh installs it), or set DCD_AZURITE", bin)
	}
	port := freePort(t)
	log, err := os.Create(filepath.Join(t.TempDir(), "azurite.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port), "--location", t.TempDir(), "--silent", "--skipApiVersionCheck")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
	})
	server := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", server); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("Azurite not listening on %s after 30s:\n%s", server, out)
		}
	}
	proxy, conns := countingProxy(t, server)
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="+azuriteKey+
		";BlobEndpoint=http://"+proxy+"/devstoreaccount1;")
	url = "azblob://" + name + "?localemu=true&protocol=http&domain=" + proxy
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var c *container.Client
	if !b.As(&c) {
		t.Fatal("an azblob:// bucket is not a *container.Client")
	}
	if _, err := c.Create(context.Background(), nil); err != nil {
		t.Fatalf("create container %s on Azurite: %v", name, err)
	}
	return url, conns
}

// countingProxy forwards TCP connections to server and counts them.
func countingProxy(t *testing.T, server string) (addr string, conns *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns = new(atomic.Int64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", server)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(s, c)
				io.Copy(c, s)
			}()
		}
	}()
	return l.Addr().String(), conns
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// What DCD does with a bucket works on Azure Blob Storage (checkStore).
func TestAzureStore(t *testing.T) {
	url, _ := azurite(t, "dcd-store")
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkStore(t, b)
}

// checkStore checks what DCD does with a bucket on an object store's
// server: whole and ranged reads, Arrow files, existence, listing, and a
// missing key failing for good instead of being retried.
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
		if err != nil {
			break
		}
		keys = append(keys, obj.Key)
	}
	if len(keys) != 1 || keys[0] != "pool/a.tar" {
		t.Errorf("listed %q", keys)
	}
}

// ListFolders lists on Azure Blob Storage, whose delimited listing and page
// tokens are its own, what List lists (checkListFolders).
func TestAzureListFolders(t *testing.T) {
	url, _ := azurite(t, "dcd-folders")
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkListFolders(t, b, 2, 100)
}

// The Azure SDK's own client, keeping 10 idle connections, opened 441 for
// these reads.
func TestAzureReusesConnections(t *testing.T) {
	ctx := context.Background()
	url, conns := azurite(t, "dcd-conns")
	b, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := WriteAll(ctx, b, "img.png", []byte("image")); err != nil {
		t.Fatal(err)
	}
	checkReuse(t, conns, func(int) error {
		_, err := ReadAll(ctx, b, "img.png")
		return err
	})
}
