package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"dcd/internal/toolcache"
)

// azuriteKey is the key of Azurite's built-in account devstoreaccount1,
// which Microsoft publishes for the emulator: not a secret.
const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

// azurite starts Azurite, Microsoft's Azure Blob Storage server, which
// scripts/setup.sh installs (env DCD_AZURITE, else in the setup's folder, toolcache),
// behind a proxy that counts the connections made to it. It creates a
// container and returns its azblob:// URL, with the credentials in this
// process's environment as a worker would have them.
func azurite(t *testing.T, name string) (url string, conns *atomic.Int64) {
	t.Helper()
	bin := os.Getenv("DCD_AZURITE")
	if bin == "" {
		bin = toolcache.Path("azurite-3.37.0", "node_modules", ".bin", "azurite-blob")
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

// azuriteBucket is a new container of Azurite's, opened as a worker
// opens its bucket, and the proxy's count of connections to it.
func azuriteBucket(t *testing.T, name string) (*blob.Bucket, *atomic.Int64) {
	t.Helper()
	url, conns := azurite(t, name)
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, conns
}

// What DCD does with a bucket works on Azure Blob Storage (checkStore).
func TestAzureStore(t *testing.T) {
	b, _ := azuriteBucket(t, "dcd-store")
	checkStore(t, b)
}

// ListFolders lists on Azure Blob Storage, whose delimited listing and page
// tokens are its own, what List lists (checkListFolders).
func TestAzureListFolders(t *testing.T) {
	b, _ := azuriteBucket(t, "dcd-folders")
	checkListFolders(t, b, 2, 100)
}

// The Azure SDK's own client, keeping 10 idle connections, opened 441 for
// these reads.
func TestAzureReusesConnections(t *testing.T) {
	ctx := context.Background()
	b, conns := azuriteBucket(t, "dcd-conns")
	if err := WriteAll(ctx, b, "img.png", []byte("image")); err != nil {
		t.Fatal(err)
	}
	checkReuse(t, conns, func(int) error {
		_, err := ReadAll(ctx, b, "img.png")
		return err
	})
}

// A SAS token travels in every Azure request's URL; a request that fails
// before its answer (here, the connection is closed on it) must not quote
// it in the error, which reaches histories and logs.
func TestAzureErrorHidesSASToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	defer srv.Close()
	t.Setenv("AZURE_STORAGE_ACCOUNT", "devstoreaccount1")
	t.Setenv("AZURE_STORAGE_KEY", "")
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "")
	t.Setenv("AZURE_STORAGEBLOB_CONNECTIONSTRING", "")
	t.Setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024-11-04&sp=r&sig=SECRETSIG")
	b, err := Open(context.Background(), "azblob://c?localemu=true&protocol=http&domain="+strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = ReadAll(context.Background(), b, "img.jpg")
	if err == nil {
		t.Fatal("a read of a server that closes every connection succeeded")
	}
	if msg := Classify(err, "img.jpg").Error(); strings.Contains(msg, "SECRETSIG") || !strings.Contains(msg, "img.jpg") {
		t.Errorf("the error %q quotes the SAS token, or not the object", msg)
	}
}

// A blob another tool uploaded under a name with '%', '#' or '?' (which
// gocloud's driver would read under an escaped name, 100__0x25__.png)
// reads, as it lists, under its own name.
func TestAzureRawNames(t *testing.T) {
	ctx := context.Background()
	b, _ := azuriteBucket(t, "dcd-raw")
	var c *container.Client
	if !b.As(&c) {
		t.Fatal("an azblob:// bucket is not a *container.Client")
	}
	names := []string{"pool/100%.png", "pool/C#/1.png", "pool/why?.png", "pool/plain.png"}
	for _, name := range names {
		if _, err := c.NewBlockBlobClient(name).UploadBuffer(ctx, []byte("bytes of "+name), nil); err != nil {
			t.Fatal(err)
		}
	}
	listed := map[string]bool{}
	if err := List(ctx, b, &blob.ListOptions{Prefix: "pool/"}, func(o *blob.ListObject) error { listed[o.Key] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if !listed[name] {
			t.Errorf("%s not listed under its name (listed %v)", name, listed)
		}
		if data, err := ReadAll(ctx, b, name); err != nil || string(data) != "bytes of "+name {
			t.Errorf("%s: %q, %v", name, data, err)
		}
		var bs Buckets
		if data, err := bs.ReadRange(ctx, b, name, 3, 5); err != nil || string(data) != "es of" {
			t.Errorf("%s bytes 3-8: %q, %v", name, data, err)
		}
		if _, err := bs.ReadRange(ctx, b, name, 3, 500); !errors.Is(err, ErrPastEnd) {
			t.Errorf("%s bytes 3-503: %v, want ErrPastEnd", name, err)
		}
	}
	if _, err := ReadAll(ctx, b, "pool/gone%.png"); !Permanent(err) || Code(err) != gcerrors.NotFound {
		t.Errorf("a missing blob of such a name: %v, want a permanent error coded NotFound", err)
	}
	// And one written through gocloud, which stores it under its escaped
	// name: read back by every read.
	const written = "models/head#2 100%.onnx"
	if err := WriteAll(ctx, b, written, []byte("bytes of a model")); err != nil {
		t.Fatal(err)
	}
	if data, err := ReadAll(ctx, b, written); err != nil || string(data) != "bytes of a model" {
		t.Errorf("%s written through gocloud: %q, %v", written, data, err)
	}
	var bs Buckets
	if data, err := bs.ReadAtMost(ctx, b, written, 1<<20); err != nil || string(data) != "bytes of a model" {
		t.Errorf("%s by ReadAtMost: %q, %v", written, data, err)
	}
	if data, err := bs.ReadRange(ctx, b, written, 3, 5); err != nil || string(data) != "es of" {
		t.Errorf("%s bytes 3-8: %q, %v", written, data, err)
	}
}

// A URL's account options the credentials would not honour are refused,
// not read from another account's container of the same name.
func TestAzureAccountGiven(t *testing.T) {
	for _, name := range []string{"AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGEBLOB_CONNECTIONSTRING"} {
		t.Setenv(name, "")
	}
	q := func(s string) url.Values { v, _ := url.ParseQuery(s); return v }
	t.Setenv("AZURE_STORAGE_ACCOUNT", "a")
	t.Setenv("AZURE_STORAGE_KEY", "k")
	if err := azureAccountGiven(q("storage_account=a&localemu=true")); err != nil {
		t.Errorf("its own account: %v", err)
	}
	// The worker's setup, not the image's: credentials refused (the shard
	// fails, no image is rejected), not permanent.
	if err := azureAccountGiven(q("storage_account=b")); err == nil || !strings.Contains(err.Error(), "account a's") || !CredentialsRefused(err) || Permanent(err) {
		t.Errorf("another account under a shared key: %v", err)
	}
	t.Setenv("AZURE_STORAGE_KEY", "")
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net")
	if err := azureAccountGiven(q("")); err != nil {
		t.Errorf("a connection string alone: %v", err)
	}
	if err := azureAccountGiven(q("storage_account=a&domain=127.0.0.1:10000")); err != nil {
		t.Errorf("the connection string's account: %v", err)
	}
	// A SAS connection string names its account by its endpoint alone.
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "BlobEndpoint=https://a.blob.core.windows.net/;SharedAccessSignature=sv=x&sig=y")
	if err := azureAccountGiven(q("storage_account=b")); err == nil || !strings.Contains(err.Error(), "is account a's") {
		t.Errorf("another account than a SAS connection string's endpoint: %v", err)
	}
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=k;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
	if err := azureAccountGiven(q("storage_account=devstoreaccount1")); err != nil {
		t.Errorf("an emulator's account, by its endpoint's path: %v", err)
	}
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "BlobEndpoint=https://images.example.com/;SharedAccessSignature=sv=x&sig=y")
	if err := azureAccountGiven(q("storage_account=b")); err != nil {
		t.Errorf("a custom domain's account is not known: %v", err)
	}
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net")
	if _, err := Open(context.Background(), "azblob://c?storage_account=b"); err == nil || !strings.Contains(err.Error(), "is account a's") || !CredentialsRefused(err) || Permanent(err) {
		t.Errorf("Open with another storage_account= than the connection string's: %v", err)
	}
}

// A URL whose endpoint options (domain=, protocol=, localemu=) name another
// endpoint than the connection string's is refused, as the worker's
// setup: the Azure SDK would use the connection string's, so a URL meant
// for a local emulator would read and write a real account's container.
// What cannot be told apart passes.
func TestAzureEndpointGiven(t *testing.T) {
	for _, name := range []string{"AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGEBLOB_CONNECTIONSTRING",
		"AZURE_STORAGE_DOMAIN", "AZURE_STORAGE_PROTOCOL", "AZURE_STORAGE_IS_LOCAL_EMULATOR", "AZURE_STORAGE_IS_CDN"} {
		t.Setenv(name, "")
	}
	check := func(conn, u string, refused bool) {
		t.Helper()
		t.Setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
		b, err := Open(context.Background(), u)
		if err == nil {
			b.Close()
		}
		switch {
		case refused && (err == nil || !strings.Contains(err.Error(), "which the Azure SDK uses instead") || !CredentialsRefused(err) || Permanent(err)):
			t.Errorf("%s under %.40q…: %v, want refused as the worker's setup", u, conn, err)
		case !refused && err != nil:
			t.Errorf("%s under %.40q…: %v", u, conn, err)
		}
	}
	cloud := "DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey=" + azuriteKey + ";EndpointSuffix=core.windows.net"
	emulator := "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + azuriteKey + ";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
	for _, tc := range []struct {
		conn, url string
		refused   bool
	}{
		{cloud, "azblob://c?localemu=true&protocol=http&domain=127.0.0.1:10000", true},
		{cloud, "azblob://c?domain=blob.core.chinacloudapi.cn", true},
		{cloud, "azblob://c", false},
		{cloud, "azblob://c?domain=blob.core.windows.net&protocol=https", false},
		{emulator, "azblob://c?localemu=true&protocol=http&domain=127.0.0.1:10000", false},
		{emulator, "azblob://c?localemu=true&protocol=http&domain=localhost:10000", false}, // one loopback, by two names
		{emulator, "azblob://c?localemu=true&protocol=http&domain=127.0.0.1:10001", true},
		{emulator, "azblob://c?domain=blob.core.windows.net&protocol=https&storage_account=devstoreaccount1", true},
		// An emulator by a service's name (compose), which a URL cannot
		// name: the same one, as far as can be told.
		{strings.Replace(emulator, "127.0.0.1", "azurite", 1), "azblob://c?localemu=true&protocol=http&domain=127.0.0.1:10000", false},
		// A private endpoint of the account: not known to differ.
		{"BlobEndpoint=https://acct.privatelink.blob.core.windows.net/;SharedAccessSignature=sv=x&sig=y", "azblob://c?domain=blob.core.windows.net&storage_account=acct", false},
	} {
		check(tc.conn, tc.url, tc.refused)
	}
	// The environment's defaults for the options choose as they do.
	t.Setenv("AZURE_STORAGE_IS_LOCAL_EMULATOR", "true")
	t.Setenv("AZURE_STORAGE_PROTOCOL", "http")
	t.Setenv("AZURE_STORAGE_DOMAIN", "127.0.0.1:10000")
	check(cloud, "azblob://c", true)
	check(emulator, "azblob://c", false)
}
