package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	"dcd/internal/corrupt"
	"dcd/internal/demo"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// stateDir holds the local setup: the dev server's database, logs, pid
// files, the worker binary and the demo configs. It is relative to the
// working directory.
const stateDir = ".dcd"

type devArgs struct {
	storage string
	stop    bool
}

const devSynopsis = "[-storage URL] [-stop]"

func parseDev(e *cli, args []string) (devArgs, error) {
	var a devArgs
	fs := e.flags("dev")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL for the worker (env DCD_STORAGE)")
	fs.BoolVar(&a.stop, "stop", false, "stop the worker and dev server started in "+stateDir+"/")
	pos, err := parse(fs, devSynopsis, args)
	if err != nil {
		return a, err
	}
	if len(pos) > 0 {
		return a, usageErrorf("dev: unexpected argument %q (usage: starter dev %s)", pos[0], devSynopsis)
	}
	if err := store.CheckURL(a.storage); err != nil { // before a worker's command line shows it
		return a, usageErrorf("dev: -storage: %v", err)
	}
	return a, nil
}

func cmdDev(ctx context.Context, e *cli, args []string) error {
	a, err := parseDev(e, args)
	if err != nil {
		return err
	}
	if a.stop {
		if pid, ok := devserver.PID(stateDir, devserver.WorkerPID); ok {
			// Its activities are let end: say why nothing happens for a while.
			fmt.Fprintf(e.stdout, "stopping  the worker (pid %d; up to %s, to let its activities finish)...\n", pid, devserver.WorkerStopGrace)
		}
		lines, err := devserver.Stop(stateDir)
		for _, l := range lines {
			fmt.Fprintln(e.stdout, l)
		}
		if len(lines) == 0 && err == nil {
			fmt.Fprintf(e.stdout, "nothing from %s/ was running\n", stateDir)
		}
		return err
	}
	if err := e.ensureDev(ctx, a.storage); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nStart a pass:  starter run -config FILE -wait   (or try `starter demo`)\nStop both:     starter dev -stop\n")
	return nil
}

// ensureNamespace registers the namespace passes run in (TEMPORAL_NAMESPACE,
// -namespace) on this checkout's dev server that lacks it, one started
// before with another: its worker would exit at once, the namespace not
// found. A server not started from here (a shared one, a cluster) is not
// changed: a misspelt namespace is an error there, not a new namespace.
func (e *cli) ensureNamespace(ctx context.Context, ours bool) error {
	if e.g.namespace == "" || e.g.namespace == "default" {
		return nil
	}
	nc, err := client.NewNamespaceClient(client.Options{HostPort: e.g.address, Logger: devserver.QuietLogger()})
	if err != nil {
		return err
	}
	defer nc.Close()
	var missing *serviceerror.NamespaceNotFound
	if _, err := nc.Describe(ctx, e.g.namespace); !errors.As(err, &missing) {
		return err
	}
	if !ours {
		return fmt.Errorf("namespace %q not found at %s, a server not started from %s: create it there (temporal operator namespace create), or use one it has", e.g.namespace, e.g.address, stateDir)
	}
	err = nc.Register(ctx, &workflowservice.RegisterNamespaceRequest{Namespace: e.g.namespace, WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)})
	var exists *serviceerror.NamespaceAlreadyExists
	if err != nil && !errors.As(err, &exists) {
		return fmt.Errorf("register namespace %q: %w", e.g.namespace, err)
	}
	fmt.Fprintf(e.stdout, "namespace %s registered\n", e.g.namespace)
	return nil
}

// ensureDev makes sure a Temporal server answers at the address (starting
// a dev server in stateDir if nothing does) and that a worker from
// stateDir runs against it with the given storage, one starter at a time.
func (e *cli) ensureDev(ctx context.Context, storage string) error {
	unlock, err := devserver.Lock(ctx, filepath.Join(stateDir, devserver.StartLock), func() {
		fmt.Fprintf(e.stderr, "waiting for another starter to bring up the dev server of %s/ ...\n", stateDir)
	})
	if err != nil {
		return err
	}
	defer unlock()
	started, err := devserver.EnsureTemporal(ctx, e.g.address, stateDir, e.g.namespace)
	if err != nil {
		return err
	}
	if err := e.ensureNamespace(ctx, started || devserver.Serves(stateDir, e.g.address)); err != nil {
		return err
	}
	how := "already running"
	if started {
		how = "started"
	}
	if err := e.checkServerShared(ctx, started); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "temporal  %s at %s, log %s\n          web UI %s\n", how, e.g.address,
		filepath.Join(stateDir, devserver.TemporalLog), devserver.UIURL(e.g.address))

	bin, err := filepath.Abs(filepath.Join(stateDir, "bin", "worker"))
	if err != nil {
		return err
	}
	// The worker is built on every start, so that what the checkout now
	// holds (a pull, an edit) runs: a worker still running from an older
	// build is stopped, its activities let finish, and started anew.
	rebuilt, err := e.buildWorker(ctx, bin)
	if err != nil {
		return err
	}
	args := []string{"-address", e.g.address, "-namespace", e.g.namespace, "-storage", storage}
	// (Or built before and left running: a start refused below, or one
	// interrupted, renamed the new build in place already.)
	if _, ok := devserver.PID(stateDir, devserver.WorkerPID); ok && (rebuilt || devserver.WorkerOutdated(stateDir)) {
		// Replaced only by a worker on the old one's bucket, namespace
		// and server: one elsewhere would take the old one's passes.
		if err := devserver.CheckWorker(args, stateDir); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "stopping  the worker built before the checkout changed (up to %s, to let its activities finish)\n", devserver.WorkerStopGrace)
		if _, err := devserver.StopWorker(stateDir); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted before starting the worker: %w", ctx.Err())
	}
	started, err = devserver.EnsureWorker(ctx, bin, args, workerDefaults(), stateDir)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted while the worker started (it runs; `starter dev -stop` stops it): %w", ctx.Err())
	}
	how = "already running"
	if started {
		how = "started"
	}
	pid, _ := devserver.PID(stateDir, devserver.WorkerPID)
	fmt.Fprintf(e.stdout, "worker    %s (pid %d), log %s\n          storage %s\n", how, pid,
		filepath.Join(stateDir, devserver.WorkerLog), redact.URL(storage))
	return nil
}

// workerDefaults are the values a worker takes for its settings left
// unset (worker -h): a shell that sets one to it asks nothing new.
func workerDefaults() map[string]string {
	return map[string]string{"DCD_ORT_LIB": ortrun.SetupLibrary(), "DCD_EP": "cpu", "DCD_QUEUES": "cpu,gpu,train",
		"DCD_THREADS": "0", "DCD_CONCURRENCY": "0", "DCD_READERS": strconv.Itoa(embed.DefaultReaders)}
}

// checkServerShared refuses a server that another checkout (or a cluster)
// runs workers on, when no worker of this one runs yet: this checkout's,
// with its own bucket, would take their passes' activities, and they this
// one's, each failing to find the other's files.
func (e *cli) checkServerShared(ctx context.Context, started bool) error {
	if started || devserver.Serves(stateDir, e.g.address) {
		return nil
	}
	if _, ok := devserver.PID(stateDir, devserver.WorkerPID); ok {
		return nil
	}
	c, err := e.Client()
	if err != nil {
		return err
	}
	// A worker polls for workflow tasks at least every 70 s (its long
	// poll's timeout): one the server still lists from longer ago is gone,
	// as this checkout's is for five minutes after `starter dev -stop`.
	polled, err := polledSince(ctx, c, workflows.CPUQueue, enumspb.TASK_QUEUE_TYPE_WORKFLOW, time.Now().Add(-2*time.Minute))
	if err != nil || !polled {
		return err
	}
	return fmt.Errorf("a Temporal server not started from %s answers at %s, and other workers poll its task queues: "+
		"a worker of this checkout beside them would take their activities, with another bucket. "+
		"Run this one's on another address (`-address 127.0.0.1:7300`), or stop the other (`starter dev -stop` in its checkout)", stateDir, e.g.address)
}

// buildWorker builds dcd/worker into bin with the go tool, so that the
// worker runs the checkout's current code. Outside a checkout, a binary
// built earlier is used.
func (e *cli) buildWorker(ctx context.Context, bin string) (rebuilt bool, err error) {
	// A name of its own: two starters in one checkout (two demos at once)
	// would remove each other's build under one name.
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return false, err
	}
	f, err := os.CreateTemp(filepath.Dir(bin), "worker.next-*")
	if err != nil {
		return false, err
	}
	f.Close()
	next := f.Name()
	defer os.Remove(next)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", next, "dcd/worker")
	cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("interrupted while building the worker: %w", ctx.Err())
		}
		if _, statErr := os.Stat(bin); statErr == nil {
			fmt.Fprintf(e.stderr, "starter: go build dcd/worker: %v; using the worker built before\n", err)
			return false, nil
		}
		return false, fmt.Errorf("build the worker: %w (run starter from the DCD checkout, or build it with `go build -o %s ./worker`)", err, filepath.Join(stateDir, "bin", "worker"))
	}
	if same, _ := sameFile(next, bin); same {
		return false, nil
	}
	fmt.Fprintf(e.stdout, "built     the worker (go build -o %s dcd/worker)\n", filepath.Join(stateDir, "bin", "worker"))
	// A rename, not a write: the running worker's file stays as it was.
	return true, os.Rename(next, bin)
}

// sameFile says whether the files at a and b hold the same bytes.
func sameFile(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}

type demoArgs struct {
	corruption string
	seed       uint64
	small      bool
	noWait     bool
	storage    string
}

const demoSynopsis = "[-corruption blur] [-seed 1] [-small] [-no-wait] [-storage URL]"

func parseDemo(e *cli, args []string) (demoArgs, error) {
	var a demoArgs
	fs := e.flags("demo")
	fs.StringVar(&a.corruption, "corruption", "blur", "the shift E the model fails on: blur, noise, invert, contrast, fog, rot90, ...")
	fs.Uint64Var(&a.seed, "seed", 1, "seed of the demo world and of the pass")
	fs.BoolVar(&a.small, "small", false, "a smaller world (train 3000, pool 6000, test 2000, E_heldout 600): faster")
	fs.BoolVar(&a.noWait, "no-wait", false, "start the pass and return")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL for the demo world and the worker (env DCD_STORAGE)")
	pos, err := parse(fs, demoSynopsis, args)
	if err != nil {
		return a, err
	}
	if len(pos) > 0 {
		return a, usageErrorf("demo: unexpected argument %q (usage: starter demo %s)", pos[0], demoSynopsis)
	}
	if known := corrupt.Names(); !slices.Contains(known, a.corruption) {
		return a, usageErrorf("demo: -corruption %q is not one of %s", a.corruption, strings.Join(known, ", "))
	}
	if a.seed == 0 { // the world's options read 0 as unset, seed 1: another seed's world under this one's name
		return a, usageErrorf("demo: -seed must be at least 1")
	}
	if err := store.CheckURL(a.storage); err != nil {
		return a, usageErrorf("demo: -storage: %v", err)
	}
	return a, nil
}

// demoOptions are the demo world's options for the flags.
func demoOptions(a demoArgs) demo.Options {
	o := demo.Options{Seed: a.seed, Corruption: a.corruption}
	if a.small {
		o.Train, o.Pool, o.Test, o.Heldout = 3000, 6000, 2000, 600
	}
	return o
}

func cmdDemo(ctx context.Context, e *cli, args []string) error {
	a, err := parseDemo(e, args)
	if err != nil {
		return err
	}
	if dir, ok := localPath(a.storage, ""); ok {
		// The demo makes its world there: a folder not made yet is asked
		// for (a worker takes only an existing one, or create_dir=1).
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("demo: -storage: %w", err)
		}
	}
	if err := e.ensureDev(ctx, a.storage); err != nil {
		return err
	}
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		return fmt.Errorf("demo: %w (run `make setup`, or set DCD_ORT_LIB to libonnxruntime.so)", err)
	}
	bucket, err := store.Open(ctx, a.storage)
	if err != nil {
		return err
	}
	defer bucket.Close()

	o := demoOptions(a)
	fmt.Fprintf(e.stdout, "world     %s (MNIST from %s; built once, then reused)\n", o.WithDefaults().Prefix, mnist.DefaultDir())
	t0 := time.Now()
	// One starter at a time builds (or sweeps) a world: another's sweep
	// would delete images under a pass already running on them. Worlds of
	// other options, under other prefixes, build side by side.
	world := strings.NewReplacer("/", "_", ":", "_").Replace(strings.TrimSuffix(o.WithDefaults().Prefix, "/"))
	unlock, err := devserver.Lock(ctx, filepath.Join(stateDir, "world-"+world+".lock"), func() {
		fmt.Fprintf(e.stderr, "waiting for another starter building the world %s ...\n", o.WithDefaults().Prefix)
	})
	if err != nil {
		return err
	}
	cfg, err := demo.Build(ctx, bucket, mnist.DefaultDir(), o, ortrun.Options{})
	unlock()
	if err != nil {
		return err
	}
	if d := time.Since(t0); d > time.Second {
		fmt.Fprintf(e.stdout, "          ready in %s\n", d.Round(time.Second))
	}
	cfgPath := filepath.Join(stateDir, "demo-"+a.corruption+".yaml")
	kept, err := writeDemoConfig(cfgPath, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "config    %s (edit it and rerun with `starter run -config %s -wait`)\n", cfgPath, cfgPath)
	if kept != "" {
		fmt.Fprintf(e.stdout, "          the edited one it replaces is kept as %s\n", kept)
	}
	fmt.Fprintln(e.stdout)

	c, err := e.Client()
	if err != nil {
		return err
	}
	id, err := e.startFreshPass(ctx, c, workflows.PassInput{Config: cfg}, passID(cfg.Name, time.Now()))
	if err != nil {
		return err
	}
	if a.noWait {
		fmt.Fprintf(e.stdout, "watch it with `starter status %s`; results with `starter result %s`\n", id, id)
		return nil
	}
	return e.waitAndReport(ctx, c, id, a.storage)
}

// writeConfig writes cfg as YAML that schemas.LoadConfig reads back, under
// a header whose first line holds the digest of the YAML (demoWrote).
func writeConfig(path string, cfg schemas.Config) error {
	body, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	head := "# DCD pass config written by `starter demo`, " + bodyDigest(body) + "\n" +
		"# Run it again with: starter run -config " + path + " -wait\n\n"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte(head), body...), 0o644)
}

// writeDemoConfig writes the demo's config to path, as writeConfig does.
// The file there may be one the user edited, as the demo invites: one
// whose body is not what its header says a demo wrote is first kept
// under the first free name path.~N~, which it returns, so that no run of
// the demo (another seed, -small) loses an edit.
func writeDemoConfig(path string, cfg schemas.Config) (kept string, err error) {
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", err
	case !demoWrote(old):
		for n := 1; ; n++ {
			kept = fmt.Sprintf("%s.~%d~", path, n)
			if _, err := os.Lstat(kept); errors.Is(err, fs.ErrNotExist) {
				break
			} else if err != nil {
				return "", err
			}
		}
		if err := os.Rename(path, kept); err != nil {
			return "", err
		}
	}
	return kept, writeConfig(path, cfg)
}

// demoWrote says whether a config file is as writeConfig wrote it: its
// first line holds the digest of what follows the header.
func demoWrote(file []byte) bool {
	first, _, _ := bytes.Cut(file, []byte("\n"))
	_, body, ok := bytes.Cut(file, []byte("\n\n"))
	return ok && bytes.HasSuffix(first, []byte(bodyDigest(body)))
}

func bodyDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
