package store

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"weak"

	"cloud.google.com/go/storage"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	azblobblob "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/s3blob"

	"dcd/internal/redact"
)

// maxIdlePerHost is how many idle connections an s3:// or azblob:// bucket
// keeps to its store. The AWS and Azure SDKs keep 10, and close every
// connection that comes back to a full pool, so that the next read dials
// again: a TCP and a TLS handshake each time, and sockets piling up in
// TIME_WAIT. A worker keeps far more reads in flight than 10 (Readers per
// embedding, or a WebDataset span and its readahead, times the activities
// it runs). Idle connections never outnumber the reads that were once in
// flight together, and close after the transport's idle timeout, so the
// bound only has to exceed what a worker runs. (Google Cloud Storage's
// client speaks HTTP/2, many reads to one connection.)
const maxIdlePerHost = 1024

// openS3 opens an s3:// URL as gocloud.dev/blob/s3blob's URLOpener does,
// with the same query options, but with an HTTP client that keeps
// maxIdlePerHost idle connections: the URLOpener has no way to set one.
// AWS_MAX_ATTEMPTS, or the profile's max_attempts, sets the tries of each
// request (default 3).
// Open names the URL in its errors.
func openS3(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	q := u.Query()
	var opts s3blob.Options
	var clientOpts []func(*s3.Options)
	boolOpt := func(set func(o *s3.Options, v bool)) func(string) error {
		return func(s string) error {
			v, err := strconv.ParseBool(s)
			if err == nil {
				clientOpts = append(clientOpts, func(o *s3.Options) { set(o, v) })
			}
			return err
		}
	}
	usePathStyle := boolOpt(func(o *s3.Options, v bool) { o.UsePathStyle = v })
	// s3blob's own options, in the order it reads them; what is left in q
	// must be AWS configuration.
	for _, opt := range []struct {
		key   string
		parse func(string) error
	}{
		{"ssetype", func(s string) error {
			for _, t := range types.ServerSideEncryptionAes256.Values() {
				if strings.EqualFold(string(t), s) {
					opts.EncryptionType = t
					return nil
				}
			}
			return fmt.Errorf("%q is not one of %v", s, types.ServerSideEncryptionAes256.Values())
		}},
		{"kmskeyid", func(s string) error { opts.KMSEncryptionID = s; return nil }},
		{"accelerate", boolOpt(func(o *s3.Options, v bool) { o.UseAccelerate = v })},
		{"disable_https", boolOpt(func(o *s3.Options, v bool) { o.EndpointOptions.DisableHTTPS = v })},
		{"use_path_style", usePathStyle},
		{"s3ForcePathStyle", usePathStyle}, // s3blob's name from AWS SDK v1
	} {
		if !q.Has(opt.key) {
			continue
		}
		v := q.Get(opt.key)
		q.Del(opt.key)
		if err := opt.parse(v); err != nil {
			return nil, fmt.Errorf("invalid value for %q: %w", opt.key, err)
		}
	}
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, err
	}
	// The config's own client carries what the environment asked of it
	// (AWS_CA_BUNDLE's roots): keep it, with more idle connections.
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = awshttp.NewBuildableClient()
	}
	if c, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		cfg.HTTPClient = c.WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = maxIdlePerHost
			t.MaxIdleConnsPerHost = maxIdlePerHost
		})
	}
	opts.RequestChecksumCalculation = cfg.RequestChecksumCalculation
	// gocloud sets a retryer of its own, which makes the SDK skip its retry
	// settings (AWS_MAX_ATTEMPTS, a profile's max_attempts): read them as
	// the SDK would have, and apply them.
	var profile []func(*config.LoadOptions) error
	if p := u.Query().Get("profile"); p != "" {
		profile = append(profile, config.WithSharedConfigProfile(p))
	}
	std, err := config.LoadDefaultConfig(ctx, profile...)
	if err != nil {
		return nil, err
	}
	if n := std.RetryMaxAttempts; n > 0 {
		clientOpts = append(clientOpts, func(o *s3.Options) { o.RetryMaxAttempts = n })
	}
	return s3blob.OpenBucket(ctx, s3.NewFromConfig(cfg, clientOpts...), u.Host, &opts)
}

// abortTimeout bounds the request that ends an abandoned multipart upload
// on S3, which must not be made under the context whose cancellation
// abandoned it.
const abortTimeout = time.Minute

// WriterOptions are the options of every object DCD writes to b: its
// content type ("": gocloud's guess from the first bytes) and, on S3, a write that ends with its context cancelled
// aborting its multipart upload. gocloud's S3 writer aborts it under that
// cancelled context, which fails, and the parts already uploaded (an
// object over 16 MiB, a feature file or an archive, goes up in parts of
// 8 MiB) stay in the bucket, billed and in no listing of its objects.
// The transfer manager aborts under a context of its own when given a
// FailTimeout, which gocloud has no option for: the manager it made is
// replaced, before the write starts, with one made as it made it (the
// client's checksum setting; DCD sets neither part size nor concurrency)
// and a FailTimeout.
func WriterOptions(b *blob.Bucket, contentType string) *blob.WriterOptions {
	return &blob.WriterOptions{ContentType: contentType, BeforeWrite: func(as func(any) bool) error {
		var tm *transfermanager.Client
		var client *s3.Client
		if as(&tm) && b.As(&client) {
			*tm = *transfermanager.New(client, func(o *transfermanager.Options) {
				o.RequestChecksumCalculation = client.Options().RequestChecksumCalculation
				o.FailTimeout = abortTimeout
			})
		}
		return nil
	}}
}

// openAzure opens an azblob:// URL as gocloud.dev/blob/azureblob's default
// opener does, with the same query options and credentials from the same
// environment variables, but with an HTTP client that keeps
// maxIdlePerHost idle connections.
func openAzure(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	if err := azureAccountGiven(u.Query()); err != nil {
		return nil, err
	}
	endpointGiven := azureEndpointOptions(u.Query())
	makeClient := func(svcURL azureblob.ServiceURL, name azureblob.ContainerName) (*container.Client, error) {
		if endpointGiven != "" && azureCredentials() == "connection" {
			if err := connectionReaches(azureConnection(), svcURL, endpointGiven); err != nil {
				return nil, err
			}
		}
		return newAzureClient(svcURL, name)
	}
	o := &azureblob.URLOpener{MakeClient: makeClient, ServiceURLOptions: *azureblob.NewDefaultServiceURLOptions()}
	return o.OpenBucketURL(ctx, u)
}

// azureEndpointOptions lists what chooses an azblob:// URL's endpoint,
// as given, or "": its options (domain=, protocol=, localemu=, cdn=) and
// the environment's defaults for them, which gocloud reads.
func azureEndpointOptions(q url.Values) string {
	var given []string
	for _, k := range []string{"domain", "protocol", "localemu", "cdn"} {
		if q.Has(k) {
			given = append(given, k+"="+q.Get(k))
		}
	}
	for _, k := range []string{"AZURE_STORAGE_DOMAIN", "AZURE_STORAGE_PROTOCOL", "AZURE_STORAGE_IS_LOCAL_EMULATOR", "AZURE_STORAGE_IS_CDN"} {
		if v := os.Getenv(k); v != "" {
			given = append(given, k+"="+v)
		}
	}
	return strings.Join(given, ", ")
}

// connectionReaches refuses a URL whose endpoint options (given) choose
// another endpoint than conn, the connection string, reaches: the Azure
// SDK takes the connection string's and drops the URL's, so a URL meant
// for a local emulator would read and write the account the connection
// string names. The worker's setup (CredentialsRefused), as an account
// refused is. What cannot be told apart passes: a custom domain or a
// private endpoint may be the URL's account, and an emulator the worker
// reaches by a service's name (http://azurite:10000/…) the one a URL,
// which gocloud allows only on a loopback host, names so.
func connectionReaches(conn string, svcURL azureblob.ServiceURL, given string) error {
	want, err := url.Parse(string(svcURL))
	if err != nil {
		return err
	}
	got := connectionEndpoint(conn)
	if got == nil {
		return nil
	}
	wk, gk := endpointKind(want), endpointKind(got)
	switch {
	case wk == "custom" || gk == "custom":
		return nil
	case wk == "cloud" && gk == "cloud" && strings.EqualFold(want.Hostname(), got.Hostname()):
		return nil
	case wk == "emulator" && gk == "emulator" && (!loopback(got.Hostname()) || got.Port() == want.Port()):
		return nil
	}
	return fmt.Errorf("store: azblob:// %s names the endpoint %s://%s, but the connection string (AZURE_STORAGE_CONNECTION_STRING) reaches %s://%s, which the Azure SDK uses instead: %w",
		given, want.Scheme, want.Host, got.Scheme, got.Host, errNotTheirAccount)
}

// endpointKind tells a blob endpoint's kind: "cloud", an Azure account's
// (<account>.blob.core.<cloud's suffix>); "emulator", a loopback host's,
// or one whose path names the account (Azurite's, by any host name); or
// "custom" (a custom domain, a private endpoint).
func endpointKind(u *url.URL) string {
	host := strings.ToLower(u.Hostname())
	switch _, rest, _ := strings.Cut(host, "."); {
	case loopback(host):
		return "emulator"
	case strings.HasPrefix(rest, "blob.core."):
		return "cloud"
	case strings.Trim(u.Path, "/") != "":
		return "emulator"
	}
	return "custom"
}

// loopback reports whether host names this machine, as gocloud allows a
// local emulator's domain= to.
func loopback(host string) bool {
	host = strings.ToLower(host)
	ip := net.ParseIP(host)
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || (ip != nil && ip.IsLoopback())
}

// azureAccountGiven refuses a URL whose storage_account= the credentials
// newAzureClient picks are not for: a shared key signs for
// AZURE_STORAGE_ACCOUNT (every read refused), and a connection string
// names its own account, which the URL's storage_account= does not change
// (its container of the same name would be read). The worker's setup, not
// the URL's fault: CredentialsRefused, so no image is rejected for it.
func azureAccountGiven(q url.Values) error {
	given := q.Get("storage_account")
	if given == "" {
		return nil
	}
	switch azureCredentials() {
	case "key":
		if account := os.Getenv("AZURE_STORAGE_ACCOUNT"); given != account {
			return fmt.Errorf("store: azblob:// storage_account=%s, but the shared key (AZURE_STORAGE_KEY) is account %s's: %w", given, account, errNotTheirAccount)
		}
	case "connection":
		if name := connectionAccount(azureConnection()); name != "" && name != given {
			return fmt.Errorf("store: azblob:// storage_account=%s, but the connection string (AZURE_STORAGE_CONNECTION_STRING) is account %s's: %w", given, name, errNotTheirAccount)
		}
	}
	return nil
}

// CredentialsSource names where a bucket URL's driver takes the worker's
// credentials from, for a message about their refusal.
func CredentialsSource(bucketURL string) string {
	scheme, _, _ := strings.Cut(strings.ToLower(bucketURL), "://")
	var q url.Values
	if _, query, ok := strings.Cut(bucketURL, "?"); ok {
		q, _ = url.ParseQuery(query)
	}
	switch {
	case q.Get("anonymous") == "true":
		return "none (anonymous=true)"
	case scheme == "s3" && q.Get("profile") != "":
		return "the profile " + q.Get("profile") + " (profile=)"
	case scheme == "gs" && q.Get("private_key_path") != "":
		return "the key file private_key_path= names"
	}
	switch scheme {
	case "s3":
		return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else AWS_PROFILE's, else the machine's role"
	case "gs":
		return "GOOGLE_APPLICATION_CREDENTIALS, else the machine's default credentials"
	case "azblob":
		switch azureCredentials() {
		case "key":
			return "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"
		case "sas":
			return "AZURE_STORAGE_SAS_TOKEN"
		case "connection":
			return "AZURE_STORAGE_CONNECTION_STRING"
		}
		return "Azure's default credentials (az login, a managed identity)"
	}
	return "the worker's environment"
}

// azureCredentials names the credentials newAzureClient picks from the
// environment: "key", "sas", "connection" or "default".
func azureCredentials() string {
	switch {
	case os.Getenv("AZURE_STORAGE_ACCOUNT") != "" && os.Getenv("AZURE_STORAGE_KEY") != "":
		return "key"
	case os.Getenv("AZURE_STORAGE_SAS_TOKEN") != "":
		return "sas"
	case azureConnection() != "":
		return "connection"
	}
	return "default"
}

// connectionAccount is the account a connection string reaches: its
// BlobEndpoint's, which the Azure SDK takes over AccountName (an Azure
// host's first label, or an emulator's first path segment; a custom
// domain's is not known), else AccountName.
func connectionAccount(conn string) string {
	f := connectionFields(conn)
	u := connectionEndpoint(conn)
	if f["blobendpoint"] == "" || u == nil {
		return f["accountname"]
	}
	host := u.Hostname()
	if net.ParseIP(host) != nil || host == "localhost" {
		first, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		return first
	}
	if first, rest, _ := strings.Cut(host, "."); strings.HasPrefix(rest, "blob.core.") {
		return first
	}
	return "" // a custom domain: not checked
}

// connectionEndpoint is the blob endpoint a connection string reaches, as
// the Azure SDK derives it: its BlobEndpoint, else <DefaultEndpointsProtocol>
// ://<AccountName>.blob.<EndpointSuffix>; nil if it names none (the SDK
// refuses it).
func connectionEndpoint(conn string) *url.URL {
	f := connectionFields(conn)
	endpoint := f["blobendpoint"]
	if endpoint == "" && f["accountname"] != "" {
		endpoint = cmp.Or(f["defaultendpointsprotocol"], "https") + "://" + f["accountname"] + ".blob." + cmp.Or(f["endpointsuffix"], "core.windows.net")
	}
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u
	}
	return nil
}

// connectionFields are a connection string's fields by their lower-case
// names.
func connectionFields(conn string) map[string]string {
	f := map[string]string{}
	for _, part := range strings.Split(conn, ";") {
		k, v, _ := strings.Cut(part, "=")
		f[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	return f
}

// errNotTheirAccount marks a URL's account the worker's credentials are
// not for (CredentialsRefused).
var errNotTheirAccount = errors.New("the worker's credentials are for another account")

// azureConnection is the connection string in the environment, if any.
func azureConnection() string {
	return cmp.Or(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), os.Getenv("AZURE_STORAGEBLOB_CONNECTIONSTRING"))
}

// newAzureClient picks credentials as azureblob's default opener does: an
// account and key, else a SAS token (in the service URL), else a
// connection string, else Azure's default chain (managed identity, the
// az CLI's login, AZURE_CLIENT_* variables).
func newAzureClient(svcURL azureblob.ServiceURL, name azureblob.ContainerName) (*container.Client, error) {
	// The Azure SDK's own transport, but for the idle connections: Go's
	// default with TLS ≥ 1.2 and renegotiation allowed.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, Renegotiation: tls.RenegotiateFreelyAsClient}
	t.MaxIdleConns, t.MaxIdleConnsPerHost = maxIdlePerHost, maxIdlePerHost
	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: redactingClient{&http.Client{Transport: t}}}}
	containerURL, err := url.JoinPath(string(svcURL), string(name))
	if err != nil {
		return nil, err
	}
	switch azureCredentials() {
	case "key":
		cred, err := azblob.NewSharedKeyCredential(os.Getenv("AZURE_STORAGE_ACCOUNT"), os.Getenv("AZURE_STORAGE_KEY"))
		if err != nil {
			return nil, err
		}
		return container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
	case "sas":
		return container.NewClientWithNoCredential(containerURL, opts)
	case "connection":
		return container.NewClientFromConnectionString(azureConnection(), string(name), opts)
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, err
	}
	return container.NewClient(containerURL, cred, opts)
}

// objectReader reads an object's bytes and knows its whole size: a
// gocloud *blob.Reader, or an Azure blob read under its own name.
type objectReader interface {
	io.ReadCloser
	Size() int64
}

// newRangeReader is b.NewRangeReader (length < 0: to the end), but for a
// key gocloud's Azure driver would read under another name: it escapes
// '"', '#', '%', '?', '\' and control characters (100%.png is read as
// 100__0x25__.png), as it writes them, and so never finds a blob another
// tool uploaded under its own name, though it lists it so. Such a key is
// read by the Azure SDK itself; one it does not find there may be one
// gocloud wrote under its escaped name (WriteAll's), read so.
func newRangeReader(ctx context.Context, b *blob.Bucket, key string, offset, length int64) (objectReader, error) {
	var c *container.Client
	if !azureEscapes(key) || !b.As(&c) {
		return b.NewRangeReader(ctx, key, offset, length, nil)
	}
	name := key
	if p, ok := prefixOf(b); ok {
		name = p + key
	}
	opts := &azblobblob.DownloadStreamOptions{Range: azblobblob.HTTPRange{Offset: offset, Count: max(length, 0)}}
	resp, err := c.NewBlobClient(name).DownloadStream(ctx, opts)
	if httpStatus(err) == http.StatusNotFound {
		return b.NewRangeReader(ctx, key, offset, length, nil)
	}
	if err != nil {
		return nil, err
	}
	size := int64(0)
	if resp.ContentLength != nil {
		size = *resp.ContentLength
	}
	// A range's answer says the blob's size after its "/": bytes 0-9/1000.
	if r := resp.ContentRange; r != nil {
		if _, total, ok := strings.Cut(*r, "/"); ok {
			if n, err := strconv.ParseInt(total, 10, 64); err == nil {
				size = n
			}
		}
	}
	body := resp.Body
	if length == 0 {
		body.Close()
		body = http.NoBody
	}
	return &azureReader{body, size}, nil
}

type azureReader struct {
	io.ReadCloser
	size int64
}

func (r *azureReader) Size() int64 { return r.size }

// azureEscapes says whether gocloud's azureblob driver names key's blob
// otherwise (its escapeKey).
func azureEscapes(key string) bool {
	for _, c := range key {
		if c < 32 || c == '"' || c == '#' || c == '%' || c == '?' || c == '\\' || c == 127 {
			return true
		}
	}
	return strings.HasSuffix(key, "/") || strings.Contains(key, "../")
}

// prefixes holds the prefix= of each bucket Open made with one (a
// blob.PrefixedBucket), by bucket: the requests DCD shapes itself
// (newRangeReader's of Azure, startingAt's listings) must add it. Keyed
// weakly and dropped with their bucket: a worker may open buckets without
// end (Buckets drops them, and a manifest's rows may each name one).
var prefixes sync.Map // weak.Pointer[blob.Bucket] → string

func setPrefix(b *blob.Bucket, prefix string) {
	k := weak.Make(b)
	prefixes.Store(k, prefix)
	runtime.AddCleanup(b, func(k weak.Pointer[blob.Bucket]) { prefixes.Delete(k) }, k)
}

// prefixOf is the prefix= b was opened with, if any.
func prefixOf(b *blob.Bucket) (string, bool) {
	p, ok := prefixes.Load(weak.Make(b))
	if !ok {
		return "", false
	}
	return p.(string), true
}

// redactingClient is an HTTP client whose errors leave out the request's
// query. With a SAS token, every Azure request carries it in its URL, and
// http.Client's errors (a cancelled or timed-out request, a reset
// connection) quote the URL whole, into activity failures, workflow
// histories and logs; azcore leaves out queries only in its own logs.
type redactingClient struct{ *http.Client }

func (c redactingClient) Do(req *http.Request) (*http.Response, error) {
	resp, err := c.Client.Do(req)
	if ue, ok := err.(*url.Error); ok {
		ue.URL = redact.URL(ue.URL)
	}
	return resp, err
}

// startingAt has a listing's first request begin near the key from, on a
// store that takes a key to list from: S3's StartAfter (Marker in its
// older listing) and GCS's StartOffset. They are given from less its last
// byte ("a/7.pn" for "a/7.png"), which sorts before it; the caller skips
// what lies between. GCS is given only keys that gcsblob would not escape
// (escapeKey: line breaks, "../", "__0x"), whose order there is theirs.
// Azure's markers are opaque: it lists from its first key, and the caller
// skips up to from.
//
// The key is b's: a bucket opened with prefix= (a blob.PrefixedBucket,
// which adds its prefix to the listing's but not to what BeforeList sets)
// is given it with the prefix, or every key under the prefix would sort
// before it and be skipped.
func startingAt(b *blob.Bucket, opts *blob.ListOptions, from string) *blob.ListOptions {
	if from == "" {
		return opts
	}
	after := from[:len(from)-1]
	if p, ok := prefixOf(b); ok {
		after = p + after
	}
	opts.BeforeList = func(as func(any) bool) error {
		var v2 *s3.ListObjectsV2Input
		if as(&v2) && v2.ContinuationToken == nil {
			v2.StartAfter = &after
		}
		var v1 *s3.ListObjectsInput
		if as(&v1) && v1.Marker == nil {
			v1.Marker = &after
		}
		var q *storage.Query
		if as(&q) && !strings.ContainsAny(after, "\n\r") && !strings.Contains(after, "../") && !strings.Contains(after, "__0x") {
			q.StartOffset = after
		}
		return nil
	}
	return opts
}
