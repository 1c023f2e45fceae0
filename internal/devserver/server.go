package devserver

import (
	"fmt"
	"io"
	"os/exec"
	"time"
)

// server is a test server's process: the S3 and GCS servers the storage
// tests and `starter bench` run on.
type server struct {
	addr   string // 127.0.0.1:<port>
	cmd    *exec.Cmd
	exited chan struct{}
}

// listening starts bin with the arguments args gives for a free local
// address, its output going to log, and waits until it listens there
// (30 s at most).
func listening(what, bin string, log io.Writer, args func(addr string) []string) (*server, error) {
	ports, err := freePorts("127.0.0.1", 1)
	if err != nil {
		return nil, fmt.Errorf("devserver: %s: %w", what, err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cmd := exec.Command(bin, args(addr)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = Attached() // not left running by a test binary that timed out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("devserver: %s: %w", what, err)
	}
	s := &server{addr: addr, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.After(30 * time.Second)
	for !Reachable(addr) {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("devserver: %s %s exited before it listened", what, bin)
		case <-deadline:
			s.Stop()
			return nil, fmt.Errorf("devserver: %s %s not listening on %s after 30s", what, bin, addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return s, nil
}

// Stop kills the server and waits for it to exit.
func (s *server) Stop() {
	s.cmd.Process.Kill()
	<-s.exited
}
