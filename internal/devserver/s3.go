package devserver

import (
	"context"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3 is a local S3 server: versitygw serving a folder. The S3 integration
// tests and `starter bench`'s remote part run on it, a real object store's
// protocol on this machine.
type S3 struct {
	Endpoint string // http://127.0.0.1:<port>
	*server
}

// The keys the S3 server accepts. A process that talks to it sets them
// (and S3Env) in its environment, as a worker reads its credentials.
const (
	S3Access = "dcd-test-access"
	S3Secret = "dcd-test-secret-key"
)

// S3Env is the environment of a client of the S3 server: its keys, and
// checksums only where S3 requires them (S3-compatible servers return
// none, and the SDK would log each response it cannot validate).
var S3Env = []string{
	"AWS_ACCESS_KEY_ID=" + S3Access,
	"AWS_SECRET_ACCESS_KEY=" + S3Secret,
	"AWS_REQUEST_CHECKSUM_CALCULATION=when_required",
	"AWS_RESPONSE_CHECKSUM_VALIDATION=when_required",
}

// VersityGWBinary returns the S3 server's path: env DCD_VERSITYGW, else
// the setup's folder's bin/versitygw (toolcache; scripts/setup.sh installs it).
func VersityGWBinary() (string, error) { return installed("DCD_VERSITYGW", "versitygw", "versitygw") }

// StartS3 starts the S3 server bin over dir on a free local port, its
// output going to log, and waits until it listens (30 s at most).
func StartS3(bin, dir string, log io.Writer) (*S3, error) {
	srv, err := listening("s3 server", bin, log, func(addr string) []string {
		return []string{"--access", S3Access, "--secret", S3Secret, "--port", addr, "posix", dir}
	})
	if err != nil {
		return nil, err
	}
	return &S3{Endpoint: "http://" + srv.addr, server: srv}, nil
}

// Bucket creates a bucket and returns its gocloud URL (gocloud cannot
// create buckets; the AWS SDK can).
func (s *S3) Bucket(ctx context.Context, name string) (string, error) {
	client := s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(S3Access, S3Secret, ""),
	})
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return "", fmt.Errorf("devserver: create bucket %s: %w", name, err)
	}
	return S3URL(name, s.Endpoint), nil
}

// S3URL is the gocloud URL of bucket name on the S3 server at endpoint.
func S3URL(name, endpoint string) string {
	return "s3://" + name + "?endpoint=" + endpoint + "&use_path_style=true&region=us-east-1"
}
