// Command worker hosts DCD's workflows and activities. Start as many as you
// like on as many machines: they share work through Temporal task queues.
// -queues picks what a worker does: "cpu" (workflows, planning, k-NN,
// retraining), "gpu" (embedding), "train" (external trainer commands,
// retrain.trainer), or any of them together.
//
// Storage credentials come from this process's environment (AWS_*,
// GOOGLE_APPLICATION_CREDENTIALS, AZURE_*), never from a pass's config.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/embed"
	"dcd/internal/knn"
	"dcd/internal/ortrun"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/workflows"
)

// options are the worker's settings.
type options struct {
	address, namespace, queues, storage, ortLib, ep, cpuProfile, spans string
	threads, concurrency, decoders, readers                            int
	badEnv                                                             []string // integer variables that are not integers
}

// defineFlags defines the worker's flags on fs. Each flag's default comes
// from the environment variable its usage names as "(env NAME)".
func defineFlags(fs *flag.FlagSet) *options {
	o := &options{}
	fs.StringVar(&o.address, "address", env("TEMPORAL_ADDRESS", "127.0.0.1:7233"), "Temporal frontend host:port (env TEMPORAL_ADDRESS)")
	fs.StringVar(&o.namespace, "namespace", env("TEMPORAL_NAMESPACE", "default"), "Temporal namespace (env TEMPORAL_NAMESPACE)")
	fs.StringVar(&o.queues, "queues", env("DCD_QUEUES", "cpu,gpu,train"), "task queues to poll: any of cpu, gpu, train, comma-separated (env DCD_QUEUES)")
	fs.StringVar(&o.storage, "storage", store.DefaultURL(), "bucket URL (env DCD_STORAGE): file:///dir?create_dir=1, s3://bucket?region=...")
	fs.StringVar(&o.ortLib, "ort-lib", ortrun.DefaultLibrary(), "path of libonnxruntime.so (env DCD_ORT_LIB)")
	fs.IntVar(&o.threads, "threads", o.envInt("DCD_THREADS", 0), "ONNX Runtime intra-op threads per session; default CPUs/concurrency for models, whose batches run at once, and every CPU for the k-NN search (env DCD_THREADS)")
	fs.StringVar(&o.ep, "ep", env("DCD_EP", "cpu"), "ONNX Runtime execution provider: cpu or cuda (env DCD_EP)")
	fs.IntVar(&o.concurrency, "concurrency", o.envInt("DCD_CONCURRENCY", 0), "activities run at once per queue; default (0): one per four CPUs, at least 2 (one per two CPUs on the gpu queue with -ep cuda) (env DCD_CONCURRENCY)")
	fs.IntVar(&o.decoders, "decoders", o.envInt("DCD_DECODERS", runtime.GOMAXPROCS(0)), "image decoding goroutines per embedding (env DCD_DECODERS)")
	fs.IntVar(&o.readers, "readers", o.envInt("DCD_READERS", embed.DefaultReaders), "image reads in flight per embedding; raise it for a pool stored one object per image on a remote store, where each read waits on the store's latency (env DCD_READERS)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", env("DCD_CPUPROFILE", ""), "write a CPU profile of the worker to FILE until it stops, for go tool pprof (env DCD_CPUPROFILE)")
	fs.StringVar(&o.spans, "activity-spans", env("DCD_ACTIVITY_SPANS", ""), "write each activity's start and end, as this worker ran it, to FILE (starter bench's orchestration share) (env DCD_ACTIVITY_SPANS)")
	return o
}

// check refuses settings the worker would start with and fail on later:
// an execution provider every embedding would reject, a queue it does not
// know or names twice (two pollers of one queue, each taking its
// concurrency). A concurrency of 0, by flag or environment as unset, is
// each queue's default (queueConcurrency). A refusal names the setting as
// it was given: the flag, or else its variable.
func (o *options) check(fs *flag.FlagSet) error {
	given := func(flagName, envName string, v any) string {
		set := false
		fs.Visit(func(f *flag.Flag) { set = set || f.Name == flagName })
		if set || os.Getenv(envName) == "" {
			return fmt.Sprintf("-%s %v", flagName, v)
		}
		return fmt.Sprintf("%s=%v", envName, v)
	}
	if len(o.badEnv) > 0 {
		return fmt.Errorf("%s: want an integer", strings.Join(o.badEnv, ", "))
	}
	if err := ortrun.CheckEP(o.ep); err != nil {
		return fmt.Errorf("%s: %w", given("ep", "DCD_EP", o.ep), err)
	}
	for _, n := range []struct {
		flag, env string
		v         int
	}{{"threads", "DCD_THREADS", o.threads}, {"concurrency", "DCD_CONCURRENCY", o.concurrency}, {"decoders", "DCD_DECODERS", o.decoders}, {"readers", "DCD_READERS", o.readers}} {
		if n.v < 0 {
			return fmt.Errorf("%s: want 0 (the default) or more", given(n.flag, n.env, n.v))
		}
	}
	if _, err := taskQueues(o.queues); err != nil {
		return fmt.Errorf("%s: %w", given("queues", "DCD_QUEUES", o.queues), err)
	}
	return nil
}

// queueConcurrency is how many activities of task queue q the worker runs
// at once: -concurrency, or the default for the models' execution provider
// on the gpu queue, which embeds, and the CPU's on the others.
func (o *options) queueConcurrency(q string) int {
	switch {
	case o.concurrency > 0:
		return o.concurrency
	case q == workflows.GPUQueue:
		return activities.DefaultConcurrency(o.ep)
	}
	return activities.DefaultConcurrency("cpu")
}

// checkStorage lists one object of the workers' bucket. An object store's
// bucket opens without a request: a name or credentials that are wrong
// would fail, for good, every activity this worker took from healthy
// ones, so they fail the worker at its start. A store that does not
// answer now may later: the worker goes on, saying so.
func checkStorage(ctx context.Context, bucket *blob.Bucket, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := bucket.IsAccessible(ctx)
	switch {
	case err == nil && !ok:
		return fmt.Errorf("worker: storage %s: no such bucket", redact.URL(url))
	case err != nil && store.CredentialsRefused(err) && store.Permanent(err):
		// (A credential service that did not answer may later.)
		return fmt.Errorf("worker: storage %s: the worker's credentials were refused or not found, from %s: %s", redact.URL(url), store.CredentialsSource(url), store.Brief(err))
	case err != nil && store.Permanent(err):
		return fmt.Errorf("worker: storage %s: %w", redact.URL(url), err)
	case err != nil:
		at := "" // a GCS emulator's address is no part of its URL
		if host := os.Getenv("STORAGE_EMULATOR_HOST"); host != "" && strings.HasPrefix(strings.ToLower(url), "gs://") {
			at = " at STORAGE_EMULATOR_HOST=" + host
		}
		log.Printf("worker: storage %s%s did not answer a listing (%v): going on, activities retry it", redact.URL(url), at, store.Brief(err))
	}
	return nil
}

func main() {
	o := defineFlags(flag.CommandLine)
	flag.Parse()
	if err := o.check(flag.CommandLine); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	stopProfile := func() {}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		stopProfile = sync.OnceFunc(func() { pprof.StopCPUProfile(); f.Close() })
		defer stopProfile() // a panic unwinding
	}
	err := run(o)
	stopProfile() // before log.Fatal's exit, which runs no defers: a whole profile
	if err != nil {
		log.Fatal(err)
	}
}

func run(o *options) error {
	ctx := context.Background()
	polled, err := taskQueues(o.queues) // (checked: o.check)
	if err != nil {
		return err
	}
	if err := ortrun.Init(o.ortLib); err != nil {
		return fmt.Errorf("worker: %w (run `make setup`, or point -ort-lib / DCD_ORT_LIB at libonnxruntime.so)", err)
	}
	bucket, err := store.Open(ctx, o.storage)
	if err != nil {
		return err
	}
	defer bucket.Close()
	if err := checkStorage(ctx, bucket, o.storage); err != nil {
		return err
	}
	// Datasets may name images in other buckets by URL; each is opened once.
	buckets := &store.Buckets{}
	defer buckets.Close()

	models, search := ortrun.Options{Threads: o.threads, EP: o.ep}, ortrun.Options{Threads: o.threads, EP: o.ep}
	if o.threads <= 0 {
		models.Threads, search.Threads = activities.DefaultThreads(o.queueConcurrency(workflows.GPUQueue)), runtime.GOMAXPROCS(0)
	}
	if o.ep != "cpu" {
		// A provider the library cannot run (a CPU build, CUDA missing)
		// fails here, not in every embedding this worker would take
		// from healthy workers until the pass ran out of attempts.
		s, err := knn.NewSearcher(search)
		if err != nil {
			return fmt.Errorf("worker: -ep %s: %w", o.ep, err)
		}
		s.Close()
	}

	// Info and up: the SDK's default logs a debug line for every
	// activity and child a workflow starts, 20,000 lines a 10,000-shard
	// pass, into logs nothing rotates.
	logger := tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	c, err := client.Dial(client.Options{HostPort: o.address, Namespace: o.namespace, Logger: logger})
	if err != nil {
		return fmt.Errorf("worker: connect to Temporal at %s: %w", o.address, err)
	}
	defer c.Close()

	// Trainer work folders a worker killed on this machine left behind
	// (spooled features, GBs): none of its activities runs any more.
	for _, dir := range activities.RemoveStaleWork("") {
		log.Printf("worker: removed %s, a trainer's work folder a killed worker left", dir)
	}
	sessions := activities.NewSessions(models, search)
	defer sessions.Close()
	acts := &activities.Activities{Bucket: bucket, Mem: memory.NewGoAllocator(), Sessions: sessions,
		Decoders: o.decoders, Readers: o.readers, Buckets: buckets, StorageURL: o.storage,
		TrainerEnv: []string{"DCD_ORT_LIB=" + o.ortLib, "DCD_EP=" + o.ep}}

	var intercept []interceptor.WorkerInterceptor
	if o.spans != "" {
		r, err := newSpanRecorder(o.spans)
		if err != nil {
			return err
		}
		defer r.f.Close()
		intercept = append(intercept, r)
	}
	var workers []worker.Worker
	// A worker that stops polling for good (its namespace deleted, say)
	// ends the process, for its supervisor to start it again, rather
	// than leave it alive and taking nothing.
	fatal := make(chan error, 1)
	onFatal := func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}
	for _, q := range polled {
		stop := 30 * time.Second
		if q == workflows.TrainQueue {
			// An external trainer is cancelled when this ends, which kills
			// its process group (WaitTrainers, below): well within the
			// grace `starter dev -stop` allows (devserver.WorkerStopGrace),
			// or the trainer outlives the worker, holding its GPU.
			stop = 3 * time.Second
		}
		w := worker.New(c, q, worker.Options{
			MaxConcurrentActivityExecutionSize: o.queueConcurrency(q),
			// On SIGTERM, let a running batch finish and its part commit
			// rather than lose it; Temporal retries the rest elsewhere.
			WorkerStopTimeout:            stop,
			MaxHeartbeatThrottleInterval: activities.HeartbeatThrottle,
			Interceptors:                 intercept,
			OnFatalError:                 onFatal,
		})
		if q == workflows.CPUQueue {
			w.RegisterWorkflow(workflows.DebugPass)
			w.RegisterWorkflow(workflows.ShardsWorkflow)
			w.RegisterWorkflow(workflows.PackWorkflow)
		}
		w.RegisterActivity(acts)
		if err := w.Start(); err != nil {
			return fmt.Errorf("worker: start %s: %w", q, err)
		}
		workers = append(workers, w)
	}
	log.Printf("worker: polling %v on %s (namespace %s), storage %s", polled, o.address, o.namespace, redact.URL(o.storage))
	var failed error
	select {
	case <-worker.InterruptCh():
		log.Printf("worker: stopping: up to 30 s for the activities running to end")
	case failed = <-fatal:
		log.Printf("worker: stopped polling: %v", failed)
	}
	var stopping sync.WaitGroup // side by side: each waits up to its stop timeout
	for _, w := range workers {
		stopping.Go(w.Stop)
	}
	stopping.Wait()
	// A trainer's cancelled activity stops its process group (SIGTERM,
	// SIGKILL 5 s on) and writes its log's end: let it, within the grace.
	if !activities.WaitTrainers(acts, 15*time.Second) {
		log.Printf("worker: an external trainer did not stop in 15 s")
	}
	if failed != nil {
		return fmt.Errorf("worker: %w", failed)
	}
	return nil
}

// taskQueues maps the -queues flag (cpu, gpu, train, comma-separated) to
// task queues.
func taskQueues(queues string) ([]string, error) {
	var polled []string
	for _, q := range strings.Split(queues, ",") {
		var tq string
		switch strings.TrimSpace(q) {
		case "cpu":
			tq = workflows.CPUQueue
		case "gpu":
			tq = workflows.GPUQueue
		case "train":
			tq = workflows.TrainQueue
		default:
			return nil, fmt.Errorf("unknown queue %q (want cpu, gpu, train or a comma-separated list)", q)
		}
		if slices.Contains(polled, tq) {
			return nil, fmt.Errorf("queue %q listed twice", strings.TrimSpace(q))
		}
		polled = append(polled, tq)
	}
	return polled, nil
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (o *options) envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		o.badEnv = append(o.badEnv, fmt.Sprintf("%s=%q", name, v))
		return def
	}
	return n
}
