package store

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/blob"
	"gocloud.dev/blob/s3blob"
)

// maxIdlePerHost is how many idle connections an s3:// bucket keeps to its
// store. The AWS SDK keeps 10, and closes every connection that comes back
// to a full pool, so that the next read dials again: a TCP and a TLS
// handshake each time, and sockets piling up in TIME_WAIT. A worker keeps
// far more reads in flight than 10 (Readers per embedding, or a WebDataset
// span and its readahead, times the activities it runs). Idle connections
// never outnumber the reads that were once in flight together, and close
// after the transport's idle timeout, so the bound only has to exceed
// what a worker runs.
const maxIdlePerHost = 1024

// openS3 opens an s3:// URL as gocloud.dev/blob/s3blob's URLOpener does,
// with the same query options, but with an HTTP client that keeps
// maxIdlePerHost idle connections: the URLOpener has no way to set one.
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
	cfg.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = maxIdlePerHost
		t.MaxIdleConnsPerHost = maxIdlePerHost
	})
	opts.RequestChecksumCalculation = cfg.RequestChecksumCalculation
	return s3blob.OpenBucket(ctx, s3.NewFromConfig(cfg, clientOpts...), u.Host, &opts)
}
