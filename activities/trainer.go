package activities

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/gcerrors"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
)

// TrainExternalInput is one method's retraining by an external command.
type TrainExternalInput struct {
	Run     string
	Method  string
	Trainer schemas.Trainer
	// Target is the checked target; TargetConfig its config entry (tensor
	// names).
	Target       ModelRef
	TargetConfig schemas.Model
	Classes      []string
	Recipe       schemas.Retrain
	Seed         uint64
	TrainShards  int
	// Debug is nil for train_only.
	Debug *DebugSet
}

// TrainExternalResult is the model the command produced, checked like the
// target: it yields the column "logits" (the trainer's Output) from the
// target's input and preprocessing.
type TrainExternalResult struct {
	Model   ModelRef
	LogKey  string
	Seconds float64
}

// logFlushEvery is how often the trainer's log is written to storage (and
// the activity heartbeats).
const logFlushEvery = 2 * time.Second

// logCap bounds the log kept in memory and in storage: its last logCap
// bytes.
const logCap = 4 << 20

// TrainExternal runs the configured trainer command for one method (on the
// train task queue): it writes the manifests and the job file the
// command's placeholders name, runs the command in a fresh work folder,
// writes its output to methods/<method>/train.log every few seconds while
// heartbeating, kills its process group when the activity is cancelled (the
// pass was cancelled) and checks the ONNX model it wrote.
//
// A command that exits non-zero fails the pass (non-retryable), quoting
// the end of its log.
func (a *Activities) TrainExternal(ctx context.Context, in TrainExternalInput) (TrainExternalResult, error) {
	start := time.Now()
	res := TrainExternalResult{LogKey: MethodKey(in.Run, in.Method, "train.log")}
	// Writing the manifests (a shard's read at a time, all_pool's the
	// whole pool's) and checking the model take longer than a heartbeat
	// timeout on large sets; runTrainer beats on its own.
	defer beating(ctx, func() []any { return nil })()
	modelKey := MethodKey(in.Run, in.Method, "model.onnx")
	trainKey := MethodKey(in.Run, in.Method, "trainer/train.csv")
	// A train image outside the classes fails the pass, as the built-in
	// head's does (rows.go), rather than be left to the trainer to drop.
	classes := dataset.NewClasses(in.Classes)
	if err := a.writeShardManifest(ctx, trainKey, in.Run, Train, in.TrainShards, &classes); err != nil {
		return res, err
	}
	debugKey := MethodKey(in.Run, in.Method, "trainer/debug_train.csv")
	switch {
	case in.Debug == nil:
		if err := store.WriteAll(ctx, a.Bucket, debugKey, []byte("uri,label,domain\n")); err != nil {
			return res, err
		}
	case in.Debug.Keep != "":
		debugKey = in.Debug.Keep
	default:
		if err := a.writeShardManifest(ctx, debugKey, in.Run, in.Debug.Dataset, in.Debug.Shards, nil); err != nil {
			return res, err
		}
	}
	target := in.TargetConfig
	target.Input, target.Preprocess = in.Target.Spec.Input, in.Target.Spec.Preprocess
	recipe := in.Recipe
	recipe.Trainer = nil
	job := schemas.TrainJob{
		Run: in.Run, Method: in.Method, Target: target, TargetBatch: in.Target.Batch, Classes: in.Classes, Retrain: recipe, Seed: in.Seed,
		Train: trainKey, DebugTrain: debugKey, Model: modelKey, Output: in.Trainer.Output,
	}
	jobKey := MethodKey(in.Run, in.Method, "trainer/job.json")
	data, _ := json.MarshalIndent(job, "", "  ")
	if err := store.WriteAll(ctx, a.Bucket, jobKey, data); err != nil {
		return res, err
	}
	work, removeWork, err := newWorkDir("")
	if err != nil {
		return res, fmt.Errorf("activities: trainer work folder: %w", err)
	}
	defer removeWork()
	vars := map[string]string{
		"storage": a.StorageURL, "train": trainKey, "debug_train": debugKey, "model": modelKey,
		"job": jobKey, "work": work, "run": in.Run, "method": in.Method,
	}
	argv := make([]string, len(in.Trainer.Command))
	for i, arg := range in.Trainer.Command {
		argv[i] = substitute(arg, vars)
	}
	// A model an earlier pass under this ID, or an earlier attempt, left
	// would pass for this trainer's should it write none.
	if err := a.Bucket.Delete(ctx, modelKey); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return res, err
	}
	if err := a.runTrainer(ctx, argv, res.LogKey); err != nil {
		return res, err
	}
	if ok, err := a.Bucket.Exists(ctx, modelKey); err != nil {
		return res, store.Classify(err, modelKey)
	} else if !ok {
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"retrain.trainer.command %q exited 0 but wrote no model at %s, where {model} said; see its log, %s", argv[0], modelKey, res.LogKey), "TrainerFailed", nil)
	}

	m, err := a.checkModel(ctx, modelField{trainer: true}, schemas.Model{
		Path: modelKey, Input: in.Target.Spec.Input, Features: in.Trainer.Output, Preprocess: in.Target.Spec.Preprocess,
	}, []string{in.Trainer.Output}, []string{"logits"})
	if err != nil {
		return res, err
	}
	if len(m.Dims) > 0 && m.Dims[0] != len(in.Classes) {
		return res, invalid("retrain.trainer.output: the model %s gives %d class scores per image in %q, but there are %d classes", modelKey, m.Dims[0], in.Trainer.Output, len(in.Classes))
	}
	// Its features of test and E_heldout are the pass's decoding, as
	// the target's are, whichever worker checked it.
	m.Spec.Decoder = in.Target.Spec.Decoder
	res.Model = m
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// writeShardManifest concatenates a dataset's shard manifests into one CSV
// manifest (uri,label,domain); given classes, a label outside them fails
// it, naming the image.
func (a *Activities) writeShardManifest(ctx context.Context, key, run, ds string, shards int, classes *dataset.Classes) error {
	return a.writeCSV(ctx, key, []string{"uri", "label", "domain"}, func(w *csv.Writer) error {
		read := ahead.Read(ctx, shards, shardsAhead, func(ctx context.Context, i int) (*dataset.Shard, error) {
			return a.readShard(ctx, ShardKey(run, ds, i))
		}, nil)
		defer read.Stop()
		for range shards {
			s, err := read.Next()
			if err != nil {
				return err
			}
			for _, it := range s.Items {
				if classes != nil && classes.Index(it.Label) < 0 {
					return offClass(ds, it, *classes)
				}
				w.Write([]string{dataset.ManifestURI(it.Key), it.Label, it.Domain})
			}
		}
		return nil
	})
}

// tailBuffer keeps the last logCap bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	dropped int64
	version int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	// Moved down once it holds twice the cap, not at every write past it:
	// a trainer writing small lines would move the whole log each time.
	if len(t.buf) > 2*logCap {
		over := t.cut()
		t.dropped += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.version++
	return len(p), nil
}

// cut is where the last logCap bytes held begin, at a line's start: a
// line cut in a URL would keep its query, which redact.Text, wanting the
// URL's scheme, misses.
func (t *tailBuffer) cut() int {
	over := len(t.buf) - logCap
	if over <= 0 {
		return 0
	}
	if nl := bytes.IndexByte(t.buf[over:], '\n'); nl >= 0 {
		over += nl + 1
	}
	return over
}

func (t *tailBuffer) snapshot() ([]byte, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	over := t.cut()
	var b []byte
	if dropped := t.dropped + int64(over); dropped > 0 {
		b = fmt.Appendf(nil, "[... %d earlier bytes dropped]\n", dropped)
	}
	return append(b, t.buf[over:]...), t.version
}

// placeholderUse is a placeholder in an argument, or a shell's ${name}.
var placeholderUse = regexp.MustCompile(`\$?\{([a-z_]+)\}`)

// substitute replaces arg's placeholders with their values in one scan, so
// that a value holding a placeholder's name (a run ID with "{model}" in
// it) is not substituted again. A shell's ${work} in a script is the
// script's, not a placeholder.
func substitute(arg string, vars map[string]string) string {
	return placeholderUse.ReplaceAllStringFunc(arg, func(m string) string {
		v, ok := vars[m[1:len(m)-1]]
		if strings.HasPrefix(m, "$") || !ok {
			return m
		}
		return v
	})
}

// runTrainer runs argv in its own process group, streaming its output to
// logKey, and kills the group when ctx ends.
func (a *Activities) runTrainer(ctx context.Context, argv []string, logKey string) error {
	a.trainers.Add(1)
	defer a.trainers.Done()
	log := &tailBuffer{}
	// The log reaches the history when the trainer fails: no tokens.
	fmt.Fprintf(log, "$ %s\n", redact.Text(strings.Join(argv, " ")))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), a.TrainerEnv...)
	// What the log shows, in the bucket and in the history: no tokens in
	// URLs, and none of the credentials the trainer is handed (one that
	// prints its environment, or a shell's -x, would show them).
	mask := redact.Env(cmd.Env)
	shown := func(s string) string { return redact.Text(mask(s)) }
	cmd.Stdout, cmd.Stderr = log, log
	// Its own group, for the kills below; the leader killed too should the
	// worker die unstopped (OOM-killed, SIGKILL), rather than train on
	// beside the retry's trainer (the thread caveat: devserver.Attached).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	// Without cancellation, flushing uses its own deadline: the last lines
	// of a killed trainer are the ones worth reading.
	flushCtx := context.WithoutCancel(ctx)
	written := -1
	flush := func() {
		data, v := log.snapshot()
		if v == written {
			return
		}
		fctx, cancel := context.WithTimeout(flushCtx, 30*time.Second)
		defer cancel()
		// The trainer may print what it was given: DCD's own prints
		// its flags' defaults, DCD_STORAGE among them, on a usage error.
		if store.WriteAll(fctx, a.Bucket, logKey, []byte(shown(string(data)))) == nil {
			written = v
		}
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(log, "cannot start: %v\n", err)
		flush()
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("retrain.trainer.command: cannot start %q: %v", argv[0], err), "TrainerFailed", err)
	}
	// However it ends, nothing of the group outlives the activity: a helper
	// that ignored SIGTERM, or one left behind by a leader that exited.
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	every := logFlushEvery
	if activity.IsActivity(ctx) {
		if hb := activity.GetInfo(ctx).HeartbeatTimeout; hb > 0 {
			every = min(every, hb/4)
		}
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if errors.Is(err, exec.ErrWaitDelay) {
				// It exited 0, and a helper it left holds its output open
				// (a monitor, a pool shutting down): done, the helper
				// killed with the group below.
				fmt.Fprintf(log, "trainer done; a process it started still held its output: killed\n")
				err = nil
			}
			if err != nil {
				fmt.Fprintf(log, "trainer failed: %v\n", err)
			}
			flush()
			if err == nil {
				return nil
			}
			var exit *exec.ExitError
			if errors.As(err, &exit) && exit.Exited() {
				return temporal.NewNonRetryableApplicationError(fmt.Sprintf("retrain.trainer.command %q exited with status %d; its log (%s) ends:\n%s",
					argv[0], exit.ExitCode(), logKey, lastLines(log, 15, shown)), "TrainerFailed", err)
			}
			return fmt.Errorf("activities: trainer %q: %w", argv[0], err) // killed by a signal: retry
		case <-tick.C:
			flush()
			data, _ := log.snapshot()
			heartbeat(ctx, len(data))
		case <-ctx.Done():
			// SIGTERM to the whole group, SIGKILL after a grace period.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			fmt.Fprintf(log, "trainer stopped: %v\n", context.Cause(ctx))
			flush()
			return ctx.Err()
		}
	}
}

// lastLines is the log's last n lines, as a terminal shows them (a
// progress bar's redraws after a carriage return, its last), at most
// maxQuoted bytes of them, as shown shows them: they go into the pass's
// error and history.
func lastLines(t *tailBuffer, n int, shown func(string) string) string {
	data, _ := t.snapshot()
	// Shown whole, then cut: a cut inside a URL would leave its query (a
	// SAS signature) without the scheme the redaction looks for, and one
	// inside a multi-line secret its last lines.
	lines := strings.Split(strings.TrimRight(shown(string(data)), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	for i, l := range lines {
		if j := strings.LastIndex(strings.TrimRight(l, "\r"), "\r"); j >= 0 {
			l = l[j+1:]
		}
		lines[i] = strings.TrimRight(l, "\r")
	}
	s := strings.Join(lines, "\n")
	if len(s) > maxQuoted {
		s = "…" + strings.ToValidUTF8(s[len(s)-maxQuoted:], "")
	}
	return s
}

// maxQuoted bounds the trainer's log quoted in a failure.
const maxQuoted = 4 << 10
