package activities

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"
	"image"
	"image/png"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v15/arrow/array"
	"gocloud.dev/gcerrors"
	"golang.org/x/image/draw"
	"golang.org/x/sync/errgroup"
	"gopkg.in/yaml.v3"

	"dcd/internal/ahead"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/preprocess"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
)

// ReportInput is what the report shows.
type ReportInput struct {
	Run    string
	Config schemas.Config
	// EvalKey is eval.json (WriteEval), which the report reads: with its
	// per-class accuracies, a target of many classes' Eval outgrows what
	// an activity's input may hold (2 MB). Empty: Eval is the results,
	// as a pass started before EvalKey passes them.
	EvalKey    string
	Eval       Eval
	PoolShards int
	Similarity ModelRef
	// NoPoolRejects says the scan rejected no pool image, so the pool
	// shards' rejects need not be read.
	NoPoolRejects bool
	// Target embedded Embedded (test, E_heldout, train: those that
	// rejected images): their rejects, left out of evaluation or
	// retraining, are listed too.
	Target   ModelRef
	Embedded []ApartSet
	// SampleShards are the E_sample shards, for the queries' labels.
	SampleShards int
	// Reference is the dcd method whose choices the gallery marks ("" for
	// none).
	Reference string
	// Samples is how many E_sample images the gallery shows (default 8),
	// each with up to Neighbors nearest pool images (default 8).
	Samples   int
	Neighbors int
}

// ReportResult says where the report and the rejects list are.
type ReportResult struct {
	ReportKey  string
	RejectsKey string
	Rejects    int // the pool's
	// SetRejects counts the rejects of the sets the target embedded, by
	// name, where there are any.
	SetRejects map[string]int `json:",omitempty"`
}

// shownConfig is the config as the report shows it: a trainer's command,
// free text, its URLs redacted, as its log shows it. A config holding a
// credential in a URL is refused before a pass starts (schemas); the
// command's other arguments are the user's to keep secrets out of.
func shownConfig(c schemas.Config) schemas.Config {
	if t := c.Retrain.Trainer; t != nil {
		shown := *t
		shown.Command = make([]string, len(t.Command))
		for i, arg := range t.Command {
			shown.Command[i] = redact.Text(arg)
		}
		c.Retrain.Trainer = &shown
	}
	return c
}

// maxRejectsShown bounds the rejects table; rejects.csv has them all.
const maxRejectsShown = 50

// thumbSide is the thumbnails' longer side in pixels.
const thumbSide = 64

// Report writes runs/<id>/rejects.csv (every image skipped, with the
// reason and its set) and runs/<id>/report.html: one self-contained page (no script,
// no external URL; thumbnails are data: URIs) with the method table, a bar
// chart of accuracies, per-class accuracies against the model before the
// pass, a gallery of E_sample images beside their nearest pool images
// (distance, weak label, whether the reference dcd method kept each), the
// rejects and the config.
func (a *Activities) Report(ctx context.Context, in ReportInput) (ReportResult, error) {
	res := ReportResult{ReportKey: RunKey(in.Run, "report.html"), RejectsKey: RunKey(in.Run, "rejects.csv")}
	// The gallery reads the selection and the neighbours whole: with no
	// pool rejects to stream, nothing else beats meanwhile.
	defer beating(ctx, func() []any { return nil })()
	if in.EvalKey != "" {
		data, err := store.ReadAll(ctx, a.Bucket, in.EvalKey)
		if err != nil {
			return res, store.Classify(err, in.EvalKey)
		}
		if err := json.Unmarshal(data, &in.Eval); err != nil {
			return res, invalid("%s: %v", in.EvalKey, err)
		}
	}
	// The gallery reads its images while the pool's rejects stream into
	// rejects.csv, which may list millions.
	type galleryRead struct {
		rows []galleryRow
		err  error
	}
	gctx, cancel := context.WithCancel(ctx)
	read := make(chan galleryRead, 1)
	go func() {
		rows, err := a.gallery(gctx, in)
		read <- galleryRead{rows, err}
	}()
	var first []listedReject
	var sets []string // in the order listed
	total := 0
	err := a.writeRejects(ctx, in, res.RejectsKey, func(r listedReject) {
		if len(first) < maxRejectsShown {
			r.URI, r.Reason = redact.URL(r.URI), redact.Text(r.Reason) // shown in the report
			first = append(first, r)
		}
		if !slices.Contains(sets, r.Dataset) {
			sets = append(sets, r.Dataset)
		}
		total++
		if r.Dataset == Pool {
			res.Rejects++
			return
		}
		if res.SetRejects == nil {
			res.SetRejects = map[string]int{}
		}
		res.SetRejects[r.Dataset]++
	})
	if err != nil {
		cancel()
	}
	g := <-read // the gallery's reads end with the activity
	cancel()
	if err != nil {
		return res, err
	}
	if g.err != nil {
		return res, g.err
	}
	cfg, _ := yaml.Marshal(shownConfig(in.Config))
	shown, ranked := shownClasses(in.Eval, in.Reference)
	page := reportData{
		Run:      in.Run,
		Eval:     in.Eval,
		Headline: headline(in.Eval, in.Reference),
		Rows:     methodRows(in.Eval, in.Config),
		Chart:    barChart(in.Eval),
		Test:     perClass(in.Eval, shown, func(m Method) []*float64 { return m.TestPerClass }, in.Eval.TestPerClassImages),
		Heldout:  perClass(in.Eval, shown, func(m Method) []*float64 { return m.HeldoutPerClass }, in.Eval.HeldoutPerClassImages),
		Classes:  len(in.Eval.Classes),
		Shown:    len(shown),
		Ranked:   ranked,
		Gallery:  g.rows,
		Rejects:  first,
		NRejects: total,
		Rejected: rejectedSummary(sets, res),
		Config:   string(cfg),
		K:        in.Config.Selection.K,
		Ref:      in.Reference,
	}
	var buf bytes.Buffer
	if err := reportPage.Execute(&buf, page); err != nil {
		return res, fmt.Errorf("activities: report: %w", err)
	}
	return res, store.WriteAll(ctx, a.Bucket, res.ReportKey, buf.Bytes())
}

// listedReject is a reject with the dataset it is of.
type listedReject struct {
	Dataset string
	embed.Reject
}

// writeRejects writes the rejects of the sets the target embedded, then
// the pool's, then train's, shard by shard, to key as CSV and hands each
// to seen. Train's come last: it may list many images long gone, which
// would fill the page's table before the pool's.
func (a *Activities) writeRejects(ctx context.Context, in ReportInput, key string, seen func(listedReject)) error {
	return a.writeCSV(ctx, key, []string{"uri", "reason", "dataset"}, func(w *csv.Writer) error {
		each := func(ds string, shards int, spec features.Spec) error {
			return a.eachRejects(ctx, in.Run, ds, shards, spec, func(rejects []embed.Reject) {
				for _, r := range rejects {
					w.Write([]string{r.URI, r.Reason, ds})
					seen(listedReject{ds, r})
				}
			})
		}
		train := -1
		for _, set := range in.Embedded {
			if set.Name == Train {
				train = set.Shards
				continue
			}
			if err := each(set.Name, set.Shards, in.Target.Spec); err != nil {
				return err
			}
		}
		if !in.NoPoolRejects {
			if err := each(Pool, in.PoolShards, in.Similarity.Spec); err != nil {
				return err
			}
		}
		if train < 0 {
			return nil
		}
		return each(Train, train, in.Target.Spec)
	})
}

// rejectedSummary says how many images of each of sets were rejected,
// for the report: "2 error_heldout images, 3 pool images".
func rejectedSummary(sets []string, res ReportResult) string {
	parts := make([]string, len(sets))
	for i, set := range sets {
		n := res.SetRejects[set]
		if set == Pool {
			n = res.Rejects
		}
		parts[i] = fmt.Sprintf("%d %s images", n, set)
	}
	return strings.Join(parts, ", ")
}

// writeCSV streams to key a CSV of header and the rows fill writes, which
// may be millions; if fill fails, the object already at key stays.
func (a *Activities) writeCSV(ctx context.Context, key string, header []string, fill func(w *csv.Writer) error) error {
	out, err := store.NewWriter(ctx, a.Bucket, key, "text/csv")
	if err != nil {
		return err
	}
	w := csv.NewWriter(out)
	w.Write(header)
	if err := fill(w); err != nil {
		out.Abort()
		return err
	}
	if w.Flush(); w.Error() != nil {
		out.Abort()
		return fmt.Errorf("store: write %q: %w", key, w.Error())
	}
	return out.Close()
}

// eachRejects calls fn with each shard's rejects of dataset ds, embedded
// with spec, in shard order.
func (a *Activities) eachRejects(ctx context.Context, run, ds string, n int, spec features.Spec, fn func([]embed.Reject)) error {
	shards := ahead.Read(ctx, n, shardsAhead, func(ctx context.Context, i int) ([]embed.Reject, error) {
		_, rejects, err := a.embeddedRejects(ctx, run, ds, i, spec)
		return rejects, err
	}, nil)
	defer shards.Stop()
	for i := 0; i < n; i++ {
		rejects, err := shards.Next()
		if err != nil {
			return err
		}
		fn(rejects)
		heartbeat(ctx, i)
	}
	return nil
}

type reportData struct {
	Run      string
	Eval     Eval
	Headline string
	Rows     []methodRow
	Chart    template.HTML
	Test     classTable
	Heldout  classTable
	Classes  int // classes in all, of which Shown in the per-class tables
	Shown    int
	Ranked   bool // the shown classes are those the reference changed most, against none
	Gallery  []galleryRow
	Rejects  []listedReject
	NRejects int
	Rejected string // rejectedSummary
	Config   string
	K        int
	Ref      string
}

type methodRow struct {
	Method
	About        string
	TestDelta    string
	HeldoutDelta string
	DeltaClass   string // "up" or "down" for the E_heldout change
}

// about says in a few words what a method is.
func about(m string, cfg schemas.Config) string {
	switch m {
	case schemas.MethodNone:
		return "the target model as it was"
	case schemas.MethodTrainOnly:
		return "head retrained on train alone"
	case schemas.MethodRandom:
		return "train + as many random pool images as " + cfg.ReferenceDCD() + " kept with a class label"
	case schemas.MethodAllPool:
		return "train + the whole pool, weak labels"
	}
	s, ok := cfg.Selection.Variant(m)
	if !ok {
		return ""
	}
	switch s.Strategy {
	case schemas.Global:
		return fmt.Sprintf("train + the %d pool images nearest the failures (%s distance)", s.Budget, s.Aggregate)
	case schemas.Threshold:
		return fmt.Sprintf("train + pool images within %g of the failures (%s distance)", s.Threshold, s.Aggregate)
	}
	return fmt.Sprintf("train + each failure's %d nearest pool images", s.K)
}

func methodRows(ev Eval, cfg schemas.Config) []methodRow {
	none, hasNone := ev.Method(schemas.MethodNone)
	var rows []methodRow
	for _, m := range ev.Methods {
		r := methodRow{Method: m, About: about(m.Method, cfg)}
		if hasNone && m.Method != schemas.MethodNone {
			r.TestDelta = points(none.TestAccuracy, m.TestAccuracy)
			r.HeldoutDelta = points(none.HeldoutAccuracy, m.HeldoutAccuracy)
			if m.HeldoutAccuracy > none.HeldoutAccuracy {
				r.DeltaClass = "up"
			} else if m.HeldoutAccuracy < none.HeldoutAccuracy {
				r.DeltaClass = "down"
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// points is a change in accuracy in percentage points, "+0.0" for none.
// A loss too small to show keeps its sign ("-0.0"): a plus beside a cell
// marked down, or a headline's "+0.0" for a model that lost, misleads.
func points(from, to float64) string {
	v := math.Round(10*(percent(to)-percent(from))) / 10
	switch {
	case v == 0 && to < from:
		return "-0.0"
	case v == 0:
		v = 0 // not -0
	}
	return fmt.Sprintf("%+.1f", v)
}

// percent is an accuracy in percent to a tenth, as the report shows it: the
// fraction rounded as starter result's %.3f rounds it (0.9505 is 95.1, where
// %.1f of 100×0.9505, 95.04999…, is 95.0), so that the two agree and a
// difference is that of the numbers shown.
func percent(f float64) float64 {
	r, err := strconv.ParseFloat(strconv.FormatFloat(f, 'f', 3, 64), 64)
	if err != nil {
		return 100 * f
	}
	return math.Round(1000*r) / 10
}

// headline sums the pass up in one sentence.
func headline(ev Eval, ref string) string {
	none, ok1 := ev.Method(schemas.MethodNone)
	dcd, ok2 := ev.Method(ref)
	if !ok1 || !ok2 {
		return ""
	}
	verb := "lifted"
	switch d := points(none.HeldoutAccuracy, dcd.HeldoutAccuracy); {
	case d == "+0.0":
		verb = "left"
	case d[0] == '-':
		verb = "lowered"
	}
	// Clean test accuracy as shown: "from 97.4% to 97.4% (-0.0)" reads
	// as a slip, and the numbers shown held.
	test := fmt.Sprintf("held at %.1f%%", percent(dcd.TestAccuracy))
	if percent(none.TestAccuracy) != percent(dcd.TestAccuracy) {
		test = fmt.Sprintf("went from %.1f%% to %.1f%% (%s)", percent(none.TestAccuracy), percent(dcd.TestAccuracy), points(none.TestAccuracy, dcd.TestAccuracy))
	}
	s := fmt.Sprintf("%s %s E_heldout accuracy from %.1f%% to %.1f%% (%s points) with %d pool images, while clean test accuracy %s.",
		ref, verb, percent(none.HeldoutAccuracy), percent(dcd.HeldoutAccuracy), points(none.HeldoutAccuracy, dcd.HeldoutAccuracy),
		dcd.DebugTrainSize, test)
	if r, ok := ev.Method(schemas.MethodRandom); ok {
		s += fmt.Sprintf(" As many random pool images gave %s points.", points(none.HeldoutAccuracy, r.HeldoutAccuracy))
	}
	return s
}

// barChart draws test and E_heldout accuracy per method as inline SVG.
func barChart(ev Eval) template.HTML {
	const (
		h, top, bottom, left = 260.0, 24.0, 58.0, 44.0
		bar, gap, group      = 26.0, 4.0, 26.0
	)
	plot := h - top - bottom
	width := left + float64(len(ev.Methods))*(2*bar+gap+group) + group
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" role="img" aria-label="accuracy per method">`, width, h, width, h)
	for _, p := range []float64{0, 25, 50, 75, 100} {
		y := top + plot*(1-p/100)
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" class="grid"/><text x="%.0f" y="%.1f" class="axis" text-anchor="end">%.0f%%</text>`,
			left, width-8, y, y, left-6, y+4, p)
	}
	x := left + group
	for _, m := range ev.Methods {
		for i, v := range []float64{m.TestAccuracy, m.HeldoutAccuracy} {
			bh := plot * v
			bx := x + float64(i)*(bar+gap)
			cls := []string{"test", "heldout"}[i]
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.0f" height="%.1f" class="%s"><title>%s %s %.1f%%</title></rect>`,
				bx, top+plot-bh, bar, bh, cls, template.HTMLEscapeString(m.Method), []string{"test", "E_heldout"}[i], percent(v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="value" text-anchor="middle">%.0f</text>`, bx+bar/2, top+plot-bh-4, math.Round(percent(v)))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="label" text-anchor="middle">%s</text>`, x+bar+gap/2, top+plot+18, template.HTMLEscapeString(m.Method))
		x += 2*bar + gap + group
	}
	ly := h - 14
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" class="test"/><text x="%.0f" y="%.0f" class="axis">clean test</text>`, left, ly-10, left+16, ly)
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" class="heldout"/><text x="%.0f" y="%.0f" class="axis">E_heldout</text>`, left+110, ly-10, left+126, ly)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

type classTable struct {
	Methods []string
	Rows    []classRow
}

type classRow struct {
	Class  string
	Images int
	Cells  []classCell
}

type classCell struct {
	Value string
	Delta string
	Style template.CSS
}

// maxClassesShown bounds the per-class tables; with more classes, those
// whose E_heldout accuracy changed most under the reference method are
// shown.
const maxClassesShown = 30

// shownClasses picks the classes of the per-class tables, in class order,
// and says whether they were ranked by the reference's change against none
// (without both, they are the first ones).
func shownClasses(ev Eval, ref string) (shown []int, ranked bool) {
	all := make([]int, len(ev.Classes))
	for c := range all {
		all[c] = c
	}
	none, ok1 := ev.Method(schemas.MethodNone)
	m, ok2 := ev.Method(ref)
	if len(all) <= maxClassesShown {
		return all, ok1 && ok2
	}
	change := func(c int) float64 {
		if !ok1 || !ok2 || c >= len(none.HeldoutPerClass) || c >= len(m.HeldoutPerClass) || none.HeldoutPerClass[c] == nil || m.HeldoutPerClass[c] == nil {
			return 0
		}
		return math.Abs(*m.HeldoutPerClass[c] - *none.HeldoutPerClass[c])
	}
	slices.SortStableFunc(all, func(a, b int) int { return cmp.Compare(change(b), change(a)) })
	all = all[:maxClassesShown]
	slices.Sort(all)
	return all, ok1 && ok2
}

// perClass lays out per-class accuracies of the shown classes, one column
// per method, each cell coloured by its change against none (the model
// before the pass).
func perClass(ev Eval, shown []int, get func(Method) []*float64, images []int) classTable {
	t := classTable{}
	for _, m := range ev.Methods {
		t.Methods = append(t.Methods, m.Method)
	}
	none, hasNone := ev.Method(schemas.MethodNone)
	for _, c := range shown {
		row := classRow{Class: ev.Classes[c]}
		if c < len(images) {
			row.Images = images[c]
		}
		for _, m := range ev.Methods {
			v := get(m)
			if c >= len(v) || v[c] == nil {
				row.Cells = append(row.Cells, classCell{Value: "–"})
				continue
			}
			cell := classCell{Value: fmt.Sprintf("%.1f", percent(*v[c]))}
			if hasNone && m.Method != schemas.MethodNone {
				if b := get(none); c < len(b) && b[c] != nil {
					d := *v[c] - *b[c]
					cell.Delta = points(*b[c], *v[c])
					alpha := math.Min(math.Abs(d)*2.5, 0.85)
					hue := 140
					if d < 0 {
						hue = 0
					}
					cell.Style = template.CSS(fmt.Sprintf("background:hsla(%d,70%%,45%%,%.2f)", hue, alpha))
				}
			}
			row.Cells = append(row.Cells, cell)
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}

type galleryRow struct {
	Query     thumb
	Neighbors []thumb
}

type thumb struct {
	Src      template.URL
	Key      string
	Label    string
	Domain   string
	Distance string
	Mark     string // "kept", "dropped: leak", … ; empty for the query
	Wrong    bool   // weak label differs from the query's label
	Failed   string // why there is no thumbnail
}

// gallery shows, for a spread of E_sample images, their nearest pool
// images from neighbors.arrow.
func (a *Activities) gallery(ctx context.Context, in ReportInput) ([]galleryRow, error) {
	samples, shown := in.Samples, in.Neighbors
	if samples <= 0 {
		samples = 8
	}
	if shown <= 0 {
		shown = 8
	}
	// What the gallery reads, side by side: from a remote store, a round
	// of requests each.
	var (
		queries    *features.Matrix
		sampled    = make([]*dataset.Shard, in.SampleShards)
		keptRows   []manifestRow
		droppedCSV []byte
		f          *store.ArrowFile
	)
	qkey, nkey := RunKey(in.Run, "queries.arrow"), RunKey(in.Run, "neighbors.arrow")
	var reads errgroup.Group
	reads.SetLimit(reportReads)
	reads.Go(func() (err error) {
		if queries, err = features.Load(ctx, a.Bucket, qkey, "features", a.Mem); err != nil {
			err = store.Classify(err, qkey)
		}
		return err
	})
	reads.Go(func() (err error) {
		if f, err = store.OpenArrow(ctx, a.Bucket, nkey, a.Mem); err != nil {
			err = store.Classify(err, nkey)
		}
		return err
	})
	for i := range sampled {
		reads.Go(func() (err error) {
			sampled[i], err = a.readShard(ctx, ShardKey(in.Run, ErrorSample, i))
			return err
		})
	}
	if in.Reference != "" { // either missing: nothing kept, or dropped; another error fails the report
		keptKey, droppedKey := MethodKey(in.Run, in.Reference, "debug_train.csv"), MethodKey(in.Run, in.Reference, "dropped.csv")
		if m, ok := in.Eval.Method(in.Reference); ok && m.DebugTrain != "" && m.DebugTrain != keptKey {
			// No guard ran (an empty selection): its files, if any, are
			// an earlier run's under this ID.
			keptKey, droppedKey = m.DebugTrain, ""
		}
		reads.Go(func() error {
			rs, err := a.readManifest(ctx, keptKey)
			keptRows = rs
			return absentOK(err)
		})
		if droppedKey != "" {
			reads.Go(func() error {
				data, err := store.ReadAll(ctx, a.Bucket, droppedKey)
				droppedCSV = data
				return absentOK(err)
			})
		}
	}
	err := reads.Wait()
	if f != nil {
		defer f.Close()
	}
	if err != nil {
		return nil, err
	}
	labels := map[string]string{}
	for _, s := range sampled {
		for _, it := range s.Items {
			labels[it.Key] = it.Label
		}
	}
	nq := len(queries.URIs)
	if nq == 0 {
		return nil, nil
	}
	pick := map[int32]int{} // query → gallery row
	for i := range min(samples, nq) {
		pick[int32(i*nq/min(samples, nq))] = len(pick)
	}
	rows := make([]galleryRow, len(pick))
	kept, dropped := map[string]bool{}, map[string]string{}
	for _, r := range keptRows {
		kept[r.key] = true
	}
	recs, _ := csv.NewReader(bytes.NewReader(droppedCSV)).ReadAll()
	for _, r := range recs[min(1, len(recs)):] {
		if len(r) >= 2 {
			dropped[itemKeyOf(r[0])] = r[1]
		}
	}
	// Rows name their images first; the thumbnails are read after, each
	// once, reportReads at a time: one after another, a report of 72
	// images waited 72 of a remote store's round trips.
	var keys []string
	index := map[string]int{} // in keys
	mk := func(key string) thumb {
		if _, ok := index[key]; !ok {
			index[key] = len(keys)
			keys = append(keys, key)
		}
		return thumb{Key: key}
	}
	for q, row := range pick {
		key := queries.URIs[q]
		t := mk(key)
		t.Label = labels[key]
		rows[row].Query = t
	}
	for r := 0; r < f.NumRecords(); r++ {
		rec, err := f.Record(r)
		if err != nil {
			return nil, fmt.Errorf("activities: %s: %w", nkey, err)
		}
		qcol := rec.Column(0).(*array.Int32)
		i := 0
		forEachNeighbor(rec, func(_ int32, c candidate) {
			q := qcol.Value(i)
			i++
			row, ok := pick[q]
			if !ok || len(rows[row].Neighbors) >= shown {
				return
			}
			t := mk(c.item.Key)
			t.Label, t.Domain = c.item.Label, c.item.Domain
			t.Distance = fmt.Sprintf("%.3g", c.Distance)
			t.Wrong = c.item.Label != rows[row].Query.Label
			switch {
			case in.Reference == "":
			case kept[c.item.Key]: // a key listed twice is kept once and dropped once
				t.Mark = "kept"
			case dropped[c.item.Key] != "":
				t.Mark = "dropped: " + dropped[c.item.Key]
			default:
				t.Mark = "not selected"
			}
			rows[row].Neighbors = append(rows[row].Neighbors, t)
		})
	}
	made := make([]thumb, len(keys))
	var g errgroup.Group
	g.SetLimit(reportReads)
	decodes := make(chan struct{}, thumbDecodes)
	// 72 photos from a remote store take a while: Report beats meanwhile.
	for i, key := range keys {
		g.Go(func() error {
			if src, err := a.thumbnail(ctx, key, decodes); err != nil {
				made[i].Failed = err.Error()
			} else {
				made[i].Src = src
			}
			return nil
		})
	}
	g.Wait()
	fill := func(t *thumb) {
		m := made[index[t.Key]]
		// A presigned image URL is shown without its token: a report
		// is passed around.
		t.Src, t.Failed, t.Key = m.Src, redact.Text(m.Failed), redact.URL(t.Key)
	}
	for r := range rows {
		fill(&rows[r].Query)
		for n := range rows[r].Neighbors {
			fill(&rows[r].Neighbors[n])
		}
	}
	return rows, nil
}

// reportReads is how many images the report reads at once; thumbDecodes
// how many it decodes at once (a 64-megapixel photo is 256 MiB decoded),
// and thumbBytes the largest file it makes a thumbnail of.
const (
	reportReads  = 16
	thumbDecodes = 2
	thumbBytes   = 64 << 20
)

// decodeThumb decodes a thumbnail's image; a test replaces it.
var decodeThumb = preprocess.Decode

// thumbnail is an image scaled to fit thumbSide×thumbSide, as a PNG data:
// URI, decoded holding one of decodes. It shrinks by the mean of the pixels
// each thumbnail pixel covers (preprocess's area filter): a pass over the
// image, where an interpolating kernel of the scale's width is many.
func (a *Activities) thumbnail(ctx context.Context, key string, decodes chan struct{}) (src template.URL, err error) {
	data, err := a.buckets().ReadAtMost(ctx, a.Bucket, key, thumbBytes)
	if err != nil {
		return "", err
	}
	select {
	case decodes <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-decodes }()
	// Temporal recovers an activity's panics, not those of its
	// goroutines, which would end the worker: a decoder's bug on one
	// image is that image's thumbnail failed.
	defer func() {
		if p := recover(); p != nil {
			src, err = "", fmt.Errorf("the decoder failed on this image (%v): a bug, please report it with the image", p)
		}
	}()
	img, err := decodeThumb(data)
	if err != nil {
		return "", err
	}
	b := img.Bounds()
	scale := float64(thumbSide) / float64(max(b.Dx(), b.Dy()))
	w, h := max(1, int(math.Round(float64(b.Dx())*scale))), max(1, int(math.Round(float64(b.Dy())*scale)))
	_, gray := img.(*image.Gray)
	var dst draw.Image
	switch {
	case scale > 1 && gray:
		// Upscaling small images (MNIST is 28×28) keeps their pixels crisp.
		dst = image.NewGray(image.Rect(0, 0, w, h))
		draw.NearestNeighbor.Scale(dst, dst.Bounds(), img, b, draw.Src, nil)
	case scale > 1:
		dst = image.NewRGBA(image.Rect(0, 0, w, h))
		draw.NearestNeighbor.Scale(dst, dst.Bounds(), img, b, draw.Src, nil)
	default:
		channels := 3
		if gray {
			channels = 1
		}
		spec := preprocess.Spec{Layout: preprocess.LayoutNHWC, Channels: channels, Height: h, Width: w, Scale: preprocess.ScaleByte}
		px := make([]float32, spec.Size())
		if err := spec.Fill(px, img); err != nil {
			return "", err
		}
		if gray {
			g := image.NewGray(image.Rect(0, 0, w, h))
			for i, v := range px {
				g.Pix[i] = byteOf(v)
			}
			dst = g
			break
		}
		rgba := image.NewRGBA(image.Rect(0, 0, w, h))
		for i := range w * h {
			copy(rgba.Pix[4*i:], []uint8{byteOf(px[3*i]), byteOf(px[3*i+1]), byteOf(px[3*i+2]), 255})
		}
		dst = rgba
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, dst); err != nil {
		return "", err
	}
	return template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes())), nil
}

// byteOf is a 0–255 float rounded to a byte.
func byteOf(v float32) uint8 { return uint8(min(max(v+0.5, 0), 255)) }

var reportPage = template.Must(template.New("report").Funcs(template.FuncMap{
	"pct": func(f float64) string { return fmt.Sprintf("%.1f%%", percent(f)) },
	"prec": func(p *float64) string {
		if p == nil {
			return "–"
		}
		return fmt.Sprintf("%.3f", *p) // as starter result: 601 of 604 is not 1.00
	},
	"secs":  func(s float64) string { return fmt.Sprintf("%.1f s", s) },
	"short": func(s string) string { return s[strings.LastIndexByte(s, '/')+1:] },
	"isDCD": schemas.IsDCD,
	"hasPrefix": func(s, p string) bool {
		return strings.HasPrefix(s, p)
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DCD pass {{.Run}}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;padding:0 1.5em;color:#1d2330}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #e3e6ec;padding-bottom:.2em}
.sub{color:#5b6475;margin-top:0}.headline{font-size:1.1em;background:#f3f7ff;border-left:4px solid #3b6fd8;padding:.7em 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #dde1e8;padding:.3em .7em;text-align:right}
th{background:#f4f6f9;font-weight:600}td.l,th.l{text-align:left}tr.dcd td{background:#f6fbf6}
.up{color:#16803c;font-weight:600}.down{color:#b42318;font-weight:600}small{color:#5b6475}
svg .grid{stroke:#e3e6ec}svg .axis{font-size:11px;fill:#5b6475}svg .label{font-size:12px;fill:#1d2330}
svg .value{font-size:10px;fill:#1d2330}svg .test{fill:#9aa8c7}svg .heldout{fill:#3b6fd8}
.classes{display:flex;gap:1.5em;flex-wrap:wrap}.classes table{font-size:12px}.classes td,.classes th{padding:.15em .45em}.classes td{min-width:2.8em}.classes td small{display:block;font-size:9.5px}.classes h3{margin:.3em 0;font-size:1em}
.row{display:flex;gap:6px;align-items:flex-start;margin:.6em 0;padding:.5em;border:1px solid #e3e6ec;border-radius:6px}
.cell{width:76px;font-size:10.5px;text-align:center;line-height:1.25}.cell img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;background:#000;border:3px solid #ccd2dd;border-radius:3px}
.query{margin-right:10px}.query img{border-color:#1d2330}.kept img{border-color:#16a34a}.drop img{border-color:#dc2626}.skip img{border-color:#ccd2dd;opacity:.75}
.wrong{color:#b42318}.missing{width:64px;height:64px;display:inline-block;background:#f4f6f9;font-size:9px;overflow:hidden}
pre{background:#f7f8fa;padding:1em;overflow:auto;font-size:12px;border-radius:6px}
</style></head><body>
<h1>Debug pass {{.Run}}</h1>
<p class="sub">{{.Eval.TestImages}} clean test images · {{.Eval.HeldoutImages}} E_heldout images · {{len .Eval.Methods}} methods on the same features and recipe</p>
{{with .Headline}}<p class="headline">{{.}}</p>{{end}}

<h2>Methods</h2>
<table><tr><th class="l">method</th><th class="l">what</th><th>test acc</th><th>Δ</th><th>E_heldout acc</th><th>Δ</th><th>debug-train</th><th>precision</th><th>wall time</th></tr>
{{range .Rows}}<tr{{if isDCD .Method.Method}} class="dcd"{{end}}><td class="l"><b>{{.Method.Method}}</b></td><td class="l"><small>{{.About}}{{with .Method.Note}}<br><b>{{.}}</b>{{end}}</small></td>
<td>{{pct .TestAccuracy}}</td><td><small>{{.TestDelta}}</small></td><td>{{pct .HeldoutAccuracy}}</td><td class="{{.DeltaClass}}">{{.HeldoutDelta}}</td>
<td>{{.DebugTrainSize}}{{if or .Duplicates .Leaks}}<br><small>−{{.Duplicates}} dup · −{{.Leaks}} leak</small>{{end}}</td><td>{{prec .SelectionPrecision}}</td><td>{{secs .WallSeconds}}</td></tr>
{{end}}</table>
<p><small>Δ: points against <b>none</b>, the model before the pass. Precision: share of the rows retrained on (added pool images that embedded, with a class's label) from the error domain, where the pool says; with an external trainer, of the images selected. Wall time: the method's own selection, retraining and evaluation, no embedding.</small></p>

<h2>Accuracy</h2>
{{.Chart}}

<h2>Failures and the pool images found for them</h2>
<p><small>Each row: an E_sample image (black frame, its true label), then its nearest pool images by the similarity model (squared l2 distance, weak label{{if .Ref}}; green: in {{.Ref}}'s debug-train set, red: dropped by a guard, grey: not selected{{end}}). A weak label in red differs from the failure's label.</small></p>
{{range .Gallery}}<div class="row">
<div class="cell query">{{template "img" .Query}}<br><b>label {{.Query.Label}}</b><br><small>{{short .Query.Key}}</small></div>
{{range .Neighbors}}<div class="cell {{if eq .Mark "kept"}}kept{{else if hasPrefix .Mark "dropped"}}drop{{else if .Mark}}skip{{end}}">{{template "img" .}}<br>
d={{.Distance}}<br><span{{if .Wrong}} class="wrong"{{end}}>weak {{.Label}}</span>{{with .Domain}}<br><small>{{.}}</small>{{end}}{{with .Mark}}{{if ne . "kept"}}<br><small>{{.}}</small>{{end}}{{end}}</div>
{{end}}</div>
{{else}}<p>No E_sample images.</p>{{end}}

<h2>Per class, against the model before the pass</h2>
{{if lt .Shown .Classes}}<p><small>{{if .Ranked}}The {{.Shown}} of {{.Classes}} classes whose E_heldout accuracy changed most under {{.Ref}}{{else}}The first {{.Shown}} of {{.Classes}} classes{{end}}; eval.json has them all.</small></p>{{end}}
<div class="classes">
<div><h3>E_heldout</h3>{{template "classes" .Heldout}}</div>
<div><h3>clean test</h3>{{template "classes" .Test}}</div>
</div>

<h2>Rejected images</h2>
{{if .NRejects}}<p>{{.Rejected}} could not be read or decoded and were skipped{{if gt .NRejects (len .Rejects)}} (the first {{len .Rejects}} below; all in rejects.csv){{end}}.</p>
<table><tr><th class="l">image</th><th class="l">set</th><th class="l">reason</th></tr>
{{range .Rejects}}<tr><td class="l">{{.URI}}</td><td class="l">{{.Dataset}}</td><td class="l"><small>{{.Reason}}</small></td></tr>
{{end}}</table>{{else}}<p>None: every image was embedded.</p>{{end}}

<h2>Config</h2>
<pre>{{.Config}}</pre>
</body></html>
{{define "img"}}{{if .Src}}<img src="{{.Src}}" alt="{{.Key}}" title="{{.Key}}">{{else}}<span class="missing" title="{{.Failed}}">no image: {{.Failed}}</span>{{end}}{{end}}
{{define "classes"}}<table><tr><th class="l">class</th><th>images</th>{{range .Methods}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr><td class="l">{{.Class}}</td><td><small>{{.Images}}</small></td>{{range .Cells}}<td style="{{.Style}}">{{.Value}}{{with .Delta}}<small>{{.}}</small>{{end}}</td>{{end}}</tr>
{{end}}</table>{{end}}
`))

// absentOK is err, but nil when it says the object is missing: a file the
// report shows only where it exists.
func absentOK(err error) error {
	if isNotFound(err) || gcerrors.Code(err) == gcerrors.NotFound {
		return nil
	}
	return err
}
