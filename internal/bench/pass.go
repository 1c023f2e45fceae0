package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
	"dcd/workflows"
)

// server is the private Temporal dev server the pass and orchestration
// parts share: a free port, its state in a temporary folder.
type server struct {
	dir      string
	hostport string
	client   client.Client
}

func startServer(ctx context.Context, o Options) (*server, error) {
	dir := filepath.Join(o.Dir, "temporal")
	hostport, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := devserver.StartTemporal(ctx, hostport, dir); err != nil {
		return nil, err
	}
	c, err := client.Dial(client.Options{HostPort: hostport, Logger: devserver.QuietLogger()})
	if err != nil {
		devserver.Stop(dir)
		return nil, fmt.Errorf("bench: %w", err)
	}
	return &server{dir: dir, hostport: hostport, client: c}, nil
}

// server returns the shared server, or starts one that stop stops.
func (o Options) server(ctx context.Context) (*server, func(), error) {
	if o.srv != nil {
		return o.srv, func() {}, nil
	}
	s, err := startServer(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	return s, s.stop, nil
}

func (s *server) stop() {
	s.client.Close()
	devserver.Stop(s.dir)
}

// freePort finds a local port that is free, below 64535 so that the dev
// server's UI port (+1000) is valid too.
func freePort() (string, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("bench: free port: %w", err)
		}
		addr := l.Addr().(*net.TCPAddr)
		l.Close()
		if addr.Port < 64535 && !devserver.Reachable(fmt.Sprintf("127.0.0.1:%d", addr.Port+1000)) {
			return addr.String(), nil
		}
	}
	return "", errors.New("bench: no free port below 64535")
}

// passCase is one pool size of the recurring-pass benchmark, with its
// features stored as float32 or, for storedAs schemas.Float16, float16.
type passCase struct {
	label    string
	rows     int
	storedAs string
}

const (
	passDim     = 384
	passClasses = 10
	passShard   = 2000 // rows per shard: the default shards.size
	passK       = 10   // the default selection.k
	passModel   = "models/target.onnx"
)

// passCompare is the default comparison but all_pool, which retrains on
// every pool image: a cost that grows with the pool by design, paid to
// prove the method once rather than on every recurring pass.
var passCompare = []string{schemas.MethodNone, schemas.MethodTrainOnly, schemas.MethodRandom, schemas.MethodDCD}

// Pass measures a recurring debug pass whose features are all cached:
// DebugPass end to end (checks, planning, queries, pool scan, merge, each
// compared method's selection, retraining and evaluation, and the report)
// on a dev server and a worker process, over synthetic manifests whose
// d=384 features it writes to the cache first. The target serves as the
// similarity model, as when a config names none, so the selected pool
// images' features come from the cache too and no image is read. It
// reports the wall time, the worker's peak RSS, and the shares of the time
// in the k-NN scan, in the rest of the activities' work (storage, mostly),
// and in orchestration (no activity running). The largest pool runs a
// second time from float16 features, which halve what the pass reads.
func Pass(ctx context.Context, o Options) ([]Result, error) {
	cases, queries := []passCase{{"250k", 250_000, ""}, {"1m", 1_000_000, ""}, {"1m_f16", 1_000_000, schemas.Float16}}, 1000
	if o.Quick {
		cases, queries = []passCase{{"20k", 20_000, ""}, {"60k", 60_000, ""}, {"60k_f16", 60_000, schemas.Float16}}, 100
	}
	dir := filepath.Join(o.Dir, "pass")
	url := "file://" + filepath.ToSlash(dir) + "?create_dir=1"
	return passes(ctx, o, url, url, cases, queries)
}

// passes writes the cases' inputs and features through the bucket at
// url, then runs each case's pass on a worker whose bucket is workerURL:
// the same bucket, perhaps by another way.
func passes(ctx context.Context, o Options, url, workerURL string, cases []passCase, queries int) ([]Result, error) {
	srv, stop, err := o.server(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	workerBin, err := o.worker(ctx)
	if err != nil {
		return nil, err
	}
	bucket, err := store.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	defer bucket.Close()
	sessions := activities.NewSessions(ortrun.Options{Threads: 1}, ortrun.Options{Threads: 1})
	defer sessions.Close()
	acts := &activities.Activities{Bucket: bucket, Mem: memory.NewGoAllocator(), Sessions: sessions}
	if err := writePassInputs(ctx, bucket, cases, queries); err != nil {
		return nil, err
	}

	var out []Result
	for _, c := range cases {
		cfg := passConfig(c, queries).WithDefaults()
		start := time.Now()
		written, err := cachePass(ctx, acts, cfg)
		if err != nil {
			return out, err
		}
		if written > 0 {
			// Flushed now, the gigabytes just written do not slow the
			// pass's own writes (the dev server's commits among them).
			syscall.Sync()
			o.logf("pass %s: wrote the features of %d shards (d=%d, %s) in %s", c.label, written, passDim, cfg.Target.StoredAs, time.Since(start).Round(time.Second))
		}
		rs, err := passRun(ctx, o, srv, workerBin, workerURL, cfg, c)
		if err != nil {
			return out, fmt.Errorf("bench: pass %s: %w", c.label, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// passManifest is the key of a pass dataset's manifest; the pool's names
// its size.
func passManifest(ds string, rows int) string {
	if ds == activities.Pool {
		return fmt.Sprintf("sets/pool-%d.csv", rows)
	}
	return "sets/" + ds + ".csv"
}

// passSizes are the datasets of a pass besides its pool, and their sizes:
// E_sample's images are the queries.
func passSizes(queries int) map[string]int {
	return map[string]int{
		activities.ErrorSample: queries, activities.ErrorHeldout: queries,
		activities.Train: 2 * passShard, activities.Test: 2 * passShard,
	}
}

// passConfig is the pass of case c: its pool, the small sets, and the
// target, as a user would configure a recurring pass.
func passConfig(c passCase, queries int) schemas.Config {
	classes := make([]string, passClasses)
	for i := range classes {
		classes[i] = strconv.Itoa(i)
	}
	ds := func(name string) schemas.Dataset { return schemas.Dataset{Manifest: passManifest(name, c.rows)} }
	return schemas.Config{
		Name: "bench-" + c.label, Seed: 1, Classes: classes,
		Target: schemas.Model{Path: passModel, Features: "features", Logits: "logits", StoredAs: c.storedAs},
		Data: schemas.Data{
			ErrorSample: ds(activities.ErrorSample), ErrorHeldout: ds(activities.ErrorHeldout),
			Train: ds(activities.Train), Test: ds(activities.Test), Pool: ds(activities.Pool),
		},
		Compare: passCompare,
	}
}

// writePassInputs writes the target model and the manifests: the small
// sets once, and a pool of each case's size, its images named in order so
// that a smaller pool is a prefix of a larger one. No image exists.
func writePassInputs(ctx context.Context, b *blob.Bucket, cases []passCase, queries int) error {
	data, err := targetModel().graph.Marshal()
	if err != nil {
		return err
	}
	if err := store.WriteAll(ctx, b, passModel, data); err != nil {
		return err
	}
	write := func(ds string, rows int) error {
		var buf bytes.Buffer
		buf.WriteString("uri,label\n")
		for i := range rows {
			fmt.Fprintf(&buf, "%s/%07d.jpg,%d\n", ds, i, i%passClasses)
		}
		return store.WriteAll(ctx, b, passManifest(ds, rows), buf.Bytes())
	}
	for ds, rows := range passSizes(queries) {
		if err := write(ds, rows); err != nil {
			return err
		}
	}
	for _, c := range cases {
		if err := write(activities.Pool, c.rows); err != nil {
			return err
		}
	}
	return nil
}

// cachePass writes the features a pass of cfg will look for, as a worker
// would have cached them: it checks the target as the pass will, cuts each
// dataset into the shards the pass will plan, and writes each shard's
// features (random) unless a smaller pool wrote them already. It returns
// how many shards it wrote.
func cachePass(ctx context.Context, a *activities.Activities, cfg schemas.Config) (int, error) {
	models, err := a.CheckModels(ctx, activities.CheckModelsInput{Target: cfg.Target})
	if err != nil {
		return 0, err
	}
	spec := models.Target.Spec
	src := dataset.Source{Bucket: a.Bucket, Mem: a.Mem}
	written := 0
	put := func(sh *dataset.Shard) error {
		key := features.Key(spec, sh.Digest())
		if ok, err := store.Exists(ctx, a.Bucket, key); err != nil || ok {
			return err
		}
		n := len(sh.Items)
		images := make([]embed.Image, n)
		for i, it := range sh.Items {
			images[i] = embed.Image{ID: it.ID, URI: it.Key, Label: it.Label}
		}
		seed := uint64(sh.Items[0].ID) + uint64(len(sh.Items[0].Key))<<40
		rec := features.Record(a.Mem, spec.Columns, embed.Batch{
			Images:  images,
			Vectors: [][]float32{uniform(seed, n*passDim), uniform(seed+1, n*passClasses)},
			Dims:    []int{passDim, passClasses},
		}, spec.StoredAs)
		err := store.WriteArrow(ctx, a.Bucket, key, rec.Schema(), a.Mem, rec)
		rec.Release()
		if err == nil {
			err = store.WriteAll(ctx, a.Bucket, key+".rejects.json", []byte("[]"))
		}
		written++
		return err
	}
	d := cfg.Data
	for _, ds := range []schemas.Dataset{d.ErrorSample, d.ErrorHeldout, d.Train, d.Test, d.Pool} {
		var cur dataset.Shard
		err := src.Walk(ctx, ds, func(it dataset.Item) error {
			cur.Items = append(cur.Items, it)
			if !dataset.EndsShard(it.Key, len(cur.Items), cfg.Shards.Size) {
				return nil
			}
			err := put(&cur)
			cur.Items = cur.Items[:0]
			return err
		})
		if err == nil && len(cur.Items) > 0 {
			err = put(&cur)
		}
		if err != nil {
			return written, fmt.Errorf("bench: cache %s: %w", ds.Manifest, err)
		}
	}
	return written, nil
}

// passRun runs one pass twice on a fresh worker process and measures the
// second run, as a recurring pass runs on a worker that has run it
// before. The first run's cold start (the worker's first workflow and
// activity tasks, code and heap paged in) cost the 250k pass about 40 ms
// more orchestration and 0.3 s more time on two vCPUs. The peak RSS is
// the worker's over both runs.
func passRun(ctx context.Context, o Options, srv *server, workerBin, url string, cfg schemas.Config, c passCase) ([]Result, error) {
	run := cfg.Name
	w, err := startWorker(ctx, o, workerBin, srv.hostport, url, run)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	ctx, cancel := w.watch(ctx)
	defer cancel()

	var (
		r     client.WorkflowRun
		res   workflows.PassResult
		start time.Time
		wall  time.Duration
	)
	for _, id := range []string{run + "-first", run} {
		start = time.Now()
		r, err = srv.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.DebugPass, workflows.PassInput{Config: cfg})
		if err != nil {
			return nil, err
		}
		if err := r.Get(ctx, &res); err != nil {
			return nil, w.failed(err)
		}
		wall = time.Since(start)
	}
	if res.CachedShards != res.Shards {
		// The bench wrote every feature: a shard embedded afresh would
		// mean it cut the datasets otherwise than the pass.
		return nil, fmt.Errorf("only %d of the pass's %d shards were cached", res.CachedShards, res.Shards)
	}
	hwm, err := w.peakRSS()
	if err != nil {
		return nil, err
	}
	t, err := activityTimes(ctx, srv.client, chain{r.GetID(), r.GetRunID()})
	if err != nil {
		return nil, err
	}
	busy := t.busy(nil)
	// Orchestration is the time no activity ran, as the worker ran them:
	// the histories' spans also hold each task's hand-off and its result's
	// way back. (Each run's own: the first run's spans end before start.)
	ran, err := w.activitySpans(start, start.Add(wall))
	if err != nil {
		return nil, err
	}
	orch := max(wall-ran.busy(nil), 0)
	// Searches run side by side, and each one's reads and writes overlap
	// the others' searches: the time some search ran is split between the
	// k-NN and storage as the searches' own times split, summed.
	// The guards' searches (dcd's dedupe and leak checks) are k-NN too.
	search := t.guards
	if t.took > 0 {
		search += time.Duration(float64(t.busy(func(s span) bool { return s.searched })) * min(float64(t.search)/float64(t.took), 1))
	}
	other := busy - search
	// Storage and the rest is what neither the k-NN nor orchestration
	// took, so that the three shares add up to the pass: the histories'
	// spans (busy) also hold each task's hand-off, which the worker's
	// (orch) count as orchestration.
	io := max(wall-search-orch, 0)
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / wall.Seconds() }
	o.logf("pass %s: %d shards in %s: k-NN %s, other activities %s (%s), orchestration %s (%s by the histories' spans; longest: %s); %d activities (%d local, %d as the worker ran them); worker peak RSS %d MiB",
		c.label, res.Shards, wall.Round(time.Millisecond), search.Round(time.Millisecond), other.Round(time.Millisecond), t.byType(),
		orch.Round(time.Millisecond), max(wall-busy, 0).Round(time.Millisecond), ran.longestGaps(start, start.Add(wall), 3), t.activities, t.local, len(ran.spans), hwm>>20)
	name := "pass_cached_" + c.label
	return []Result{
		info(name+"_time", "s", wall.Seconds(), 0),
		info(name+"_knn", "% of time", pct(search), 0),
		info(name+"_io", "% of time", pct(io), 0),
		budget(name+"_orchestration", "% of time", pct(orch), 5),
		budget(name+"_peak_rss", "MiB", float64(hwm)/(1<<20), 1024),
	}, nil
}

// chain is a workflow chain: its id and the id of its first run.
type chain struct{ id, firstRun string }

// runChains starts ShardsWorkflow chains over n shards as DebugPass does
// (ChildShards each, the default shards.chains at a time) and waits for
// them.
func runChains(ctx context.Context, c client.Client, run string, n int, input func(first, end int) workflows.ShardsInput) error {
	var inFlight []client.WorkflowRun
	wait := func(r client.WorkflowRun) error {
		var res workflows.ShardsResult
		return r.Get(ctx, &res)
	}
	for first := 0; first < n; first += workflows.ChildShards {
		if len(inFlight) == (schemas.Config{}).WithDefaults().Shards.Chains {
			if err := wait(inFlight[0]); err != nil {
				return err
			}
			inFlight = inFlight[1:]
		}
		id := fmt.Sprintf("%s/%s/%d", run, activities.Pool, first/workflows.ChildShards)
		r, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.CPUQueue}, workflows.ShardsWorkflow, input(first, min(first+workflows.ChildShards, n)))
		if err != nil {
			return fmt.Errorf("bench: start %s: %w", id, err)
		}
		inFlight = append(inFlight, r)
	}
	for _, r := range inFlight {
		if err := wait(r); err != nil {
			return err
		}
	}
	return nil
}

// span is one activity's run.
type span struct {
	activity        string
	started, closed time.Time
	searched        bool // it searched a pool shard
}

// times are the activities of a pass as its histories record them.
type times struct {
	spans        []span
	search, took time.Duration // TopKShardResult.Search and .Took, summed
	guards       time.Duration // GuardSelection's searches (SelectResult.Search), summed
	activities   int           // activities that ran, local ones included
	local        int           // local activities
}

func (t *times) addSearch(r activities.TopKShardResult) {
	t.search += r.Search
	t.took += r.Took
}

// busy is how long at least one of the spans keep keeps (nil: any) ran.
func (t times) busy(keep func(span) bool) time.Duration {
	var spans []span
	for _, s := range t.spans {
		if keep == nil || keep(s) {
			spans = append(spans, s)
		}
	}
	slices.SortFunc(spans, func(a, b span) int { return a.started.Compare(b.started) })
	var total time.Duration
	var cur span
	for i, s := range spans {
		if i > 0 && !s.started.After(cur.closed) {
			if s.closed.After(cur.closed) {
				cur.closed = s.closed
			}
			continue
		}
		total += cur.closed.Sub(cur.started)
		cur = s
	}
	return total + cur.closed.Sub(cur.started)
}

// longestGaps names the n longest stretches of [start, end) in which no
// activity ran, with the activities on either side: where orchestration
// goes.
func (t times) longestGaps(start, end time.Time, n int) string {
	type gap struct {
		d            time.Duration
		at           time.Duration
		before, next string
	}
	spans := slices.Clone(t.spans)
	slices.SortFunc(spans, func(a, b span) int { return a.started.Compare(b.started) })
	var gaps []gap
	last, lastName := start, "start"
	for _, s := range append(spans, span{activity: "end", started: end, closed: end}) {
		if s.started.After(last) {
			gaps = append(gaps, gap{s.started.Sub(last), last.Sub(start), lastName, s.activity})
		}
		if s.closed.After(last) {
			last, lastName = s.closed, s.activity
		}
	}
	slices.SortStableFunc(gaps, func(a, b gap) int { return cmp.Compare(b.d, a.d) })
	var parts []string
	for _, g := range gaps[:min(n, len(gaps))] {
		parts = append(parts, fmt.Sprintf("%s %s → %s at %s", g.d.Round(time.Millisecond), g.before, g.next, g.at.Round(10*time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

// byType says how long each kind of activity ran, the longest first.
func (t times) byType() string {
	kinds := map[string]time.Duration{}
	for _, s := range t.spans {
		if _, ok := kinds[s.activity]; !ok {
			kinds[s.activity] = t.busy(func(o span) bool { return o.activity == s.activity })
		}
	}
	names := slices.SortedFunc(maps.Keys(kinds), func(a, b string) int { return cmp.Or(cmp.Compare(kinds[b], kinds[a]), cmp.Compare(a, b)) })
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %s", n, kinds[n].Round(time.Millisecond))
	}
	return strings.Join(parts, ", ")
}

// activityTimes reads the history of every run of a workflow and of its
// children, following continue-as-new, and collects its activities' start
// and close times and k-NN time.
func activityTimes(ctx context.Context, c client.Client, root chain) (times, error) {
	var t times
	dc := converter.GetDefaultDataConverter()
	for todo := []chain{root}; len(todo) > 0; {
		id, runID := todo[0].id, todo[0].firstRun
		todo = todo[1:]
		it := c.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		started := map[int64]time.Time{}
		types := map[int64]string{}
		var taskStarted time.Time // the last workflow task's
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return t, fmt.Errorf("bench: history of %s: %w", id, err)
			}
			switch ev.GetEventType() {
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
				types[ev.GetEventId()] = ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
				started[ev.GetEventId()] = ev.GetEventTime().AsTime()
			case enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
				a := ev.GetActivityTaskCompletedEventAttributes()
				s := span{activity: types[a.GetScheduledEventId()], started: started[a.GetStartedEventId()], closed: ev.GetEventTime().AsTime()}
				var r activities.EmbedShardResult
				switch s.activity {
				case "TopKShard":
					if err := dc.FromPayloads(a.GetResult(), &r.TopK); err != nil {
						return t, fmt.Errorf("bench: TopKShard result: %w", err)
					}
				case "EmbedShard":
					if err := dc.FromPayloads(a.GetResult(), &r); err != nil {
						return t, fmt.Errorf("bench: EmbedShard result: %w", err)
					}
				case "GuardSelection":
					var g activities.SelectResult
					if err := dc.FromPayloads(a.GetResult(), &g); err != nil {
						return t, fmt.Errorf("bench: GuardSelection result: %w", err)
					}
					t.guards += g.Search
				case "CachedShards":
					// A batch: each search's span is the one its result
					// reports, within the batch's.
					var batch activities.CachedShardsResult
					if err := dc.FromPayloads(a.GetResult(), &batch); err != nil {
						return t, fmt.Errorf("bench: CachedShards result: %w", err)
					}
					for _, r := range batch.Shards {
						if r.TopK != nil {
							t.spans = append(t.spans, span{activity: "CachedShards (search)", started: r.TopK.Started, closed: r.TopK.Started.Add(r.TopK.Took), searched: true})
							t.addSearch(*r.TopK)
						}
					}
				}
				if r.TopK != nil {
					s.searched = true
					t.addSearch(*r.TopK)
				}
				t.spans = append(t.spans, s)
				t.activities++
			case enumspb.EVENT_TYPE_WORKFLOW_TASK_STARTED:
				taskStarted = ev.GetEventTime().AsTime()
			case enumspb.EVENT_TYPE_MARKER_RECORDED:
				// A local activity: its marker is written when the
				// workflow task that ran it completes, often with
				// others. A search's span is the one its result
				// reports; another's runs from the start of that task
				// to the completion its marker records.
				a := ev.GetMarkerRecordedEventAttributes()
				if a.GetMarkerName() != "LocalActivity" || a.GetFailure() != nil {
					continue
				}
				var data struct {
					ActivityType string
					ReplayTime   time.Time
				}
				if err := dc.FromPayloads(a.GetDetails()["data"], &data); err != nil {
					continue
				}
				var r activities.EmbedShardResult
				if data.ActivityType == "EmbedShard" {
					if err := dc.FromPayloads(a.GetDetails()["result"], &r); err != nil {
						return t, fmt.Errorf("bench: EmbedShard local result: %w", err)
					}
				}
				s := span{activity: data.ActivityType + " (local)", started: taskStarted, closed: data.ReplayTime}
				if r.TopK != nil {
					s.started, s.closed, s.searched = r.TopK.Started, r.TopK.Started.Add(r.TopK.Took), true
					t.addSearch(*r.TopK)
				}
				if s.closed.After(s.started) {
					t.spans = append(t.spans, s)
					t.activities++
					t.local++
				}
			case enumspb.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
				e := ev.GetChildWorkflowExecutionStartedEventAttributes().GetWorkflowExecution()
				todo = append(todo, chain{e.GetWorkflowId(), e.GetRunId()})
			case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
				todo = append(todo, chain{id, ev.GetWorkflowExecutionContinuedAsNewEventAttributes().GetNewExecutionRunId()})
			}
		}
	}
	return t, nil
}

// proc is a worker process started for one measurement.
type proc struct {
	cmd   *exec.Cmd
	log   string
	spans string // the worker's -activity-spans file
	done  chan struct{}
}

// activitySpans reads the spans of the activities the worker ran (its
// -activity-spans file) that began in [from, to).
func (p *proc) activitySpans(from, to time.Time) (times, error) {
	data, err := os.ReadFile(p.spans)
	if err != nil {
		return times{}, fmt.Errorf("bench: %w", err)
	}
	var t times
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue // the last line's end
		}
		var name string
		var start, end int64
		if _, err := fmt.Sscanf(line, "%s %d %d", &name, &start, &end); err != nil {
			return times{}, fmt.Errorf("bench: %s: line %q: %w", p.spans, line, err)
		}
		s := span{activity: name, started: time.Unix(0, start), closed: time.Unix(0, end)}
		if !s.started.Before(from) && s.started.Before(to) {
			t.spans = append(t.spans, s)
		}
	}
	return t, nil
}

// worker returns the worker binary: Options.Worker, or one built into Dir.
func (o Options) worker(ctx context.Context) (string, error) {
	if o.Worker != "" {
		return o.Worker, nil
	}
	bin := filepath.Join(o.Dir, "worker")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "dcd/worker")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: build the worker (give -worker bin/worker, or run from the dcd checkout): %v\n%s", err, out)
	}
	return bin, nil
}

// startWorker runs the worker binary against the server and bucket, and
// waits until it polls.
func startWorker(ctx context.Context, o Options, bin, hostport, url, name string) (*proc, error) {
	logPath := filepath.Join(o.Dir, "worker-"+name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer logf.Close()
	spans := filepath.Join(o.Dir, "spans-"+name)
	// Every setting given: a worker's defaults, not what the shell's
	// DCD_*/TEMPORAL_* variables (a compose setup's namespace, DCD_EP,
	// DCD_THREADS) would make of the bench's private worker, which gets
	// none of them but DCD_CACHE and DCD_ORT_LIB.
	profile := ""
	if o.WorkerProfile != "" {
		profile = o.WorkerProfile + "-" + name
	}
	args := []string{"-address", hostport, "-namespace", "default", "-storage", url, "-queues", "cpu,gpu", "-activity-spans", spans,
		"-ep", "cpu", "-threads", strconv.Itoa(max(o.Threads, 0)), "-concurrency", "0", "-cpuprofile", profile}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = devserver.Attached() // no worker left polling if the bench dies
	lib := o.ORTLib
	if lib == "" {
		lib = os.Getenv("DCD_ORT_LIB")
	}
	for _, kv := range os.Environ() {
		// DCD_CACHE stays: where the worker finds ONNX Runtime, run
		// outside make.
		if !strings.HasPrefix(kv, "DCD_") && !strings.HasPrefix(kv, "TEMPORAL_") || strings.HasPrefix(kv, "DCD_CACHE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if lib != "" {
		cmd.Env = append(cmd.Env, "DCD_ORT_LIB="+lib)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker: %w", err)
	}
	p := &proc{cmd: cmd, log: logPath, spans: spans, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.After(60 * time.Second)
	for {
		data, _ := os.ReadFile(logPath)
		if strings.Contains(string(data), "polling") {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("bench: worker exited at once:\n%s", data)
		case <-deadline:
			p.stop()
			return nil, fmt.Errorf("bench: worker not polling after 60s:\n%s", data)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watch returns ctx, cancelled too when the worker exits: a workflow
// waiting on a dead worker's queue (one killed for memory, say) would
// wait forever.
func (p *proc) watch(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// failed is err with how the worker stands, and its log's end: the log
// goes with the bench's temporary folder.
func (p *proc) failed(err error) error {
	select {
	case <-p.done:
		err = fmt.Errorf("the worker exited (%v) while the bench waited on it: %w", p.cmd.ProcessState, err)
	default:
	}
	return fmt.Errorf("bench: %w\n%s", err, devserver.Tail(p.log))
}

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func (p *proc) peakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("bench: worker peak RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("bench: worker peak RSS: no VmHWM in /proc status")
}

// stop asks the worker to stop, and kills it after 10 s.
func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Orchestration measures what Temporal costs per pool shard: pool scans
// of 2,000 shards (ShardsWorkflow chains as DebugPass starts them, K > 0)
// whose activities return at once, on the dev server with an in-process
// worker registering no-op activities under the real names. It runs twice:
// every shard cached (looked up and searched in CachedShards batches),
// and every shard new (EmbedShard embeds and searches it: one activity).
func Orchestration(ctx context.Context, o Options) ([]Result, error) {
	srv, stop, err := o.server(ctx)
	if err != nil {
		return nil, err
	}
	defer stop()
	n := 2000
	if o.Quick {
		n = 200
	}
	var workers []worker.Worker
	defer func() {
		for _, w := range workers {
			w.Stop()
		}
	}()
	for _, q := range []string{workflows.CPUQueue, workflows.GPUQueue} {
		w := worker.New(srv.client, q, worker.Options{MaxConcurrentActivityExecutionSize: 2})
		if q == workflows.CPUQueue {
			w.RegisterWorkflow(workflows.ShardsWorkflow)
		}
		for name, fn := range noopActivities {
			w.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name})
		}
		if err := w.Start(); err != nil {
			return nil, fmt.Errorf("bench: start worker: %w", err)
		}
		workers = append(workers, w)
	}
	var out []Result
	for _, kind := range []string{"cached", "new"} {
		run := fmt.Sprintf("bench-%s-%d", kind, time.Now().UnixNano())
		start := time.Now()
		err = runChains(ctx, srv.client, run, n, func(first, end int) workflows.ShardsInput {
			return workflows.ShardsInput{
				Run: run, Dataset: activities.Pool, First: first, End: end,
				Window: 4, BatchSize: 64, K: passK, Heartbeat: 30 * time.Second, Timeout: time.Hour,
			}
		})
		if err != nil {
			return out, err
		}
		wall := time.Since(start)
		o.logf("orchestration: %d no-op %s shards in %s", n, kind, wall.Round(time.Millisecond))
		out = append(out, budget(fmt.Sprintf("orchestration_%s_%d_shards", kind, n), "ms/shard", wall.Seconds()*1e3/float64(n), 25))
	}
	return out, nil
}

// noopActivities stand in for the pool scan's activities, under their
// registered names. EmbedShard finds the shard cached (and searches it)
// unless the run's name says the shards are new.
var noopActivities = map[string]any{
	"EmbedShard": noopEmbed,
	"TopKShard": func(ctx context.Context, in activities.TopKShardInput) (activities.TopKShardResult, error) {
		return activities.TopKShardResult{}, nil
	},
	"CachedShards": func(ctx context.Context, in activities.CachedShardsInput) (activities.CachedShardsResult, error) {
		var out activities.CachedShardsResult
		for i := in.First; i < in.End; i++ {
			r, _ := noopEmbed(ctx, activities.EmbedShardInput{Run: in.Run, Dataset: in.Dataset, Shard: i, K: in.K, CachedOnly: true})
			out.Shards = append(out.Shards, r)
		}
		return out, nil
	},
}

// noopEmbed is the no-op EmbedShard.
func noopEmbed(ctx context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
	if strings.HasPrefix(in.Run, "bench-new-") {
		if in.CachedOnly {
			return activities.EmbedShardResult{}, nil
		}
		return activities.EmbedShardResult{Images: passShard, TopK: &activities.TopKShardResult{}}, nil
	}
	return activities.EmbedShardResult{Cached: true, Images: passShard, TopK: &activities.TopKShardResult{}}, nil
}
