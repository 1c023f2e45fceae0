package devserver

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3 is a local S3 server: versitygw serving a folder. The S3 integration
// tests and `starter bench`'s remote part run on it, a real object store's
// protocol on this machine.
type S3 struct {
	Endpoint string // http://127.0.0.1:<port>
	cmd      *exec.Cmd
	exited   chan struct{}
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
// ~/.cache/dcd/bin/versitygw (scripts/setup.sh installs it).
func VersityGWBinary() (string, error) { return installed("DCD_VERSITYGW", "versitygw", "versitygw") }

// StartS3 starts the S3 server bin over dir on a free local port, its
// output going to log, and waits until it listens (30 s at most).
func StartS3(bin, dir string, log io.Writer) (*S3, error) {
	ports, err := freePorts("127.0.0.1", 1)
	if err != nil {
		return nil, fmt.Errorf("devserver: s3: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cmd := exec.Command(bin, "--access", S3Access, "--secret", S3Secret, "--port", addr, "posix", dir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("devserver: s3: %w", err)
	}
	s := &S3{Endpoint: "http://" + addr, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.After(30 * time.Second)
	for !Reachable(addr) {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("devserver: s3 server %s exited at once", bin)
		case <-deadline:
			s.Stop()
			return nil, fmt.Errorf("devserver: s3 server %s not listening on %s after 30s", bin, addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return s, nil
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

// Stop kills the server and waits for it to exit.
func (s *S3) Stop() {
	s.cmd.Process.Kill()
	<-s.exited
}
