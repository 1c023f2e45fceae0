package workflows

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"dcd/activities"
	"dcd/schemas"
)

// calls records the activities a pass ran, per method.
type calls struct {
	mu  sync.Mutex
	log []string
}

func (c *calls) add(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log = append(c.log, s)
}

func (c *calls) has(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.log, s)
}

func (c *calls) index(s string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Index(c.log, s)
}

// Every compared method runs its own chain on the same features: dcd and
// a variant select, gather or embed (a failed gather too), and guard;
// random draws as many images as the reference dcd kept, after its guard;
// all_pool trains on the pool's shards; none only evaluates. eval.json
// lists them in the config's order. all_pool adds the pool's images that
// embedded: with the scan's features, or with the target's when the scan
// was by another model.
func (s *UnitTestSuite) TestCompareRunsEveryMethod() {
	for _, again := range []bool{false, true} {
		s.Run(fmt.Sprint("pool embedded again: ", again), func() { s.compareEveryMethod(again) })
	}
}

func (s *UnitTestSuite) compareEveryMethod(again bool) {
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ShardsWorkflow)
	var a *activities.Activities
	c := &calls{}
	cfg := validConfig()
	cfg.Selection.Variants = map[string]schemas.SelectionVariant{"g": {Strategy: schemas.Global, Budget: 30}}
	cfg.Compare = []string{"none", "train_only", "random", "all_pool", "dcd", "dcd:g"}
	var models activities.CheckModelsResult
	if again {
		models.Target.Spec.ModelDigest = "target"
	}
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(models, nil)
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanInput) (activities.PlanResult, error) {
		c.add("plan " + in.Name)
		return activities.PlanResult{Shards: 2, Images: 20}, nil
	})
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		c.add("embed " + in.Dataset)
		switch {
		case in.Dataset == activities.Pool && in.K > 0: // the scan
			return activities.EmbedShardResult{Images: 9, Rejects: 1}, nil
		case in.Dataset == activities.Pool: // with the target
			return activities.EmbedShardResult{Images: 8, Rejects: 2}, nil
		}
		return activities.EmbedShardResult{Images: 10}, nil
	})
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(activities.QueriesResult{Queries: 5}, nil)
	env.OnActivity(a.MergeTopK, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.MergeTopKInput) (activities.MergeTopKResult, error) {
		s.Equal(cfg.ScanK(), in.K)
		return activities.MergeTopKResult{}, nil
	})
	env.OnActivity(a.SelectDebugTrain, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.SelectInput) (activities.SelectResult, error) {
		c.add("select " + in.Method + " " + in.Selection.Strategy)
		return activities.SelectResult{Manifest: in.Method + ".csv", Size: 40}, nil
	})
	env.OnActivity(a.GatherSelection, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.GatherInput) (activities.GatherResult, error) {
		c.add("gather " + in.Dataset + " " + in.Manifest)
		switch in.Dataset {
		case "debug_train-dcd-g": // its rows all in the pool's cache
			return activities.GatherResult{Shards: in.Shards, Images: 20}, nil
		case "debug_train-random": // a failed gather is embedded instead
			return activities.GatherResult{}, temporal.NewNonRetryableApplicationError("pool index unreadable", "test", nil)
		}
		return activities.GatherResult{}, nil
	})
	env.OnActivity(a.GuardSelection, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.GuardInput) (activities.SelectResult, error) {
		c.add("guard " + in.Method + " " + in.Dataset)
		size := 37
		if in.Method != "dcd" {
			size = 30
		}
		selected := 0.5 // of the images selected, against the rows retrained on (Retrain's)
		return activities.SelectResult{Manifest: in.Method + "-guarded.csv", Size: size, Leaks: 3, Precision: &selected}, nil
	})
	env.OnActivity(a.SelectRandom, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RandomInput) (activities.SelectResult, error) {
		c.add("random")
		s.Equal(37, in.N, "random draws as many as dcd kept")
		s.Equal(cfg.Seed, in.Seed)
		return activities.SelectResult{Manifest: "r.csv", Size: in.N}, nil
	})
	env.OnActivity(a.Retrain, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.RetrainInput) (activities.RetrainResult, error) {
		d := "-"
		if in.Debug != nil {
			d = in.Debug.Dataset + " " + in.Debug.Keep
		}
		c.add("retrain " + in.Method + " " + d)
		s.Equal(schemas.IsDCD(in.Method), in.Export)
		trained := float64(len(in.Method)) / 100
		return activities.RetrainResult{HeadKey: in.Method + ".json", Seconds: 1, Precision: &trained}, nil
	})
	env.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EvaluateInput) (activities.EvaluateResult, error) {
		c.add("evaluate " + in.Method + " " + in.HeadKey)
		return activities.EvaluateResult{TestAccuracy: 0.9, HeldoutAccuracy: float64(len(in.Method)) / 10, Seconds: 1,
			TestPerClass: perClass(len(in.Classes)), HeldoutPerClass: perClass(len(in.Classes))}, nil
	})
	env.OnActivity(a.WriteEval, mock.Anything, mock.Anything).Return("eval.json", nil)
	env.OnActivity(a.Report, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ReportInput) (activities.ReportResult, error) {
		s.Equal("dcd", in.Reference)
		s.Equal("eval.json", in.EvalKey, "the report reads eval.json")
		s.Empty(in.Eval.Methods, "the results do not cross Temporal again")
		return activities.ReportResult{}, nil
	})

	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	s.True(env.IsWorkflowCompleted())
	s.NoError(env.GetWorkflowError())
	var res PassResult
	s.NoError(env.GetWorkflowResult(&res))

	var names []string
	for _, m := range res.Eval.Methods {
		names = append(names, m.Method)
	}
	s.Equal(cfg.Compare, names)
	s.Equal(37, res.DebugTrain.Size, "the pass reports the reference dcd's debug-train set")
	v, err := env.QueryWorkflow(ProgressQuery)
	s.NoError(err)
	var p Progress
	s.NoError(v.Get(&p))
	s.Equal(2, p.Rejects, "the pool's rejects counted once, the scan's, not again with the target's embedding")
	s.Empty(p.Running)
	s.Empty(p.Again)
	for _, want := range []string{
		"select dcd per_query", "select dcd:g global",
		"plan debug_train", "plan debug_train-dcd-g", "gather debug_train dcd.csv", "embed debug_train",
		"gather debug_train-dcd-g dcd:g.csv", "gather debug_train-random r.csv",
		"guard dcd debug_train", "guard dcd:g debug_train-dcd-g",
		"retrain dcd debug_train dcd-guarded.csv", "retrain dcd:g debug_train-dcd-g dcd:g-guarded.csv",
		"retrain train_only -", "retrain all_pool pool ", "retrain random debug_train-random ",
		"plan debug_train-random", "embed debug_train-random",
		"evaluate none ", "evaluate dcd dcd.json", "evaluate random random.json",
	} {
		s.True(c.has(want), "no %q in %q", want, c.log)
	}
	s.False(c.has("embed debug_train-dcd-g"), "a selection gathered whole is not embedded")
	s.Less(c.index("guard dcd debug_train"), c.index("random"), "random waits for dcd's guard")
	for _, m := range res.Eval.Methods {
		s.Len(m.HeldoutPerClass, len(cfg.Classes), "a result of a few classes carries their accuracies")
		if m.Method == "dcd" {
			s.Equal(37, m.DebugTrainSize)
			s.Equal(3, m.Leaks)
			s.Equal(0.3, m.HeldoutAccuracy)
		}
		if m.Method != "none" && m.Method != "train_only" {
			// Every method's precision is of the rows it retrained on.
			s.Equal(float64(len(m.Method))/100, *m.SelectionPrecision, m.Method)
		}
		if m.Method == "all_pool" {
			want := 18 // of 20, 2 rejected by the scan
			if again {
				want = 16 // 4 rejected by the target's embedding
			}
			s.Equal(want, m.DebugTrainSize, "all_pool adds the pool's images that embedded")
		}
		if m.Method != "none" {
			s.Greater(m.WallSeconds, 1.0)
		}
	}
}

// With retrain.trainer, each retrained method runs the trainer on the train
// queue, and its model is evaluated end to end: test and E_heldout are
// embedded with it, under child workflows of their own.
func (s *UnitTestSuite) TestExternalTrainerEvaluatesItsModel() {
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ShardsWorkflow)
	var a *activities.Activities
	c := &calls{}
	cfg := validConfig()
	cfg.Compare = []string{"none", "dcd"}
	cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"train", "{model}"}, Output: "probabilities"}
	// A target of many classes: its per-class accuracies are in
	// eval.json only, not in the pass's result.
	cfg.Classes = nil
	for c := range resultPerClassEntries/len(cfg.Compare) + 1 {
		cfg.Classes = append(cfg.Classes, fmt.Sprint("class", c))
	}
	trained := activities.ModelRef{Path: "runs/x/methods/dcd/model.onnx"}
	env.OnActivity(a.CheckModels, mock.Anything, mock.Anything).Return(activities.CheckModelsResult{}, nil)
	env.OnActivity(a.CheckApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.CheckTrainApart, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(a.Plan, mock.Anything, mock.Anything).Return(activities.PlanResult{Shards: 1, Images: 10}, nil)
	env.OnActivity(a.EmbedShard, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EmbedShardInput) (activities.EmbedShardResult, error) {
		if in.Model.Path == trained.Path {
			c.add("embed " + in.Dataset + " with the trained model")
		}
		return activities.EmbedShardResult{Images: 10}, nil
	})
	env.OnActivity(a.TopKShard, mock.Anything, mock.Anything).Return(activities.TopKShardResult{}, nil)
	env.OnActivity(a.CachedShards, mock.Anything, mock.Anything).Return(noneCached)
	env.OnActivity(a.Queries, mock.Anything, mock.Anything).Return(activities.QueriesResult{Queries: 5}, nil)
	env.OnActivity(a.MergeTopK, mock.Anything, mock.Anything).Return(activities.MergeTopKResult{}, nil)
	env.OnActivity(a.SelectDebugTrain, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "s.csv", Size: 4}, nil)
	env.OnActivity(a.GuardSelection, mock.Anything, mock.Anything).Return(activities.SelectResult{Manifest: "g.csv", Size: 4}, nil)
	env.OnActivity(a.GatherSelection, mock.Anything, mock.Anything).Return(activities.GatherResult{}, nil)
	env.OnActivity(a.TrainExternal, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.TrainExternalInput) (activities.TrainExternalResult, error) {
		c.add("train " + in.Method + " on " + activity.GetInfo(ctx).TaskQueue + " keep " + in.Debug.Keep)
		return activities.TrainExternalResult{Model: trained, LogKey: "log"}, nil
	})
	env.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.EvaluateInput) (activities.EvaluateResult, error) {
		if in.Scores != nil {
			c.add("evaluate " + in.Method + " scores " + in.Scores.Path)
		}
		return activities.EvaluateResult{TestPerClass: perClass(len(in.Classes)), HeldoutPerClass: perClass(len(in.Classes))}, nil
	})
	env.OnActivity(a.WriteEval, mock.Anything, mock.Anything).Return("eval.json", nil)
	env.OnActivity(a.Report, mock.Anything, mock.Anything).Return(activities.ReportResult{}, nil)

	env.ExecuteWorkflow(DebugPass, PassInput{Config: cfg})
	s.True(env.IsWorkflowCompleted())
	s.NoError(env.GetWorkflowError())
	for _, want := range []string{
		"train dcd on " + TrainQueue + " keep g.csv",
		"embed test with the trained model", "embed error_heldout with the trained model",
		"evaluate dcd scores " + trained.Path,
	} {
		s.True(c.has(want), "no %q in %q", want, c.log)
	}
	var res PassResult
	s.NoError(env.GetWorkflowResult(&res))
	s.Equal(trained.Path, res.Eval.Methods[1].Model)
	s.Equal("log", res.Eval.Methods[1].Log)
	for _, m := range res.Eval.Methods {
		s.Nil(m.HeldoutPerClass, "%d classes' accuracies in the result", len(cfg.Classes))
	}
}

// perClass is accuracies of n classes.
func perClass(n int) []*float64 {
	out := make([]*float64, n)
	for c := range out {
		v := float64(c%7) / 7
		out[c] = &v
	}
	return out
}

// The shards a comparison embeds again are known before the scan, and
// counted into the total from the start: all_pool's pool when another
// model scanned it, each trained method's test and E_heldout with an
// external trainer's model.
func TestEmbeddedAgain(t *testing.T) {
	plans := map[string]activities.PlanResult{activities.Pool: {Shards: 7}, activities.Test: {Shards: 3}, activities.ErrorHeldout: {Shards: 2}}
	same := activities.CheckModelsResult{}
	var other activities.CheckModelsResult
	other.Target.Spec.ModelDigest = "target"
	cfg := validConfig()
	cfg.Compare = []string{schemas.MethodNone, schemas.MethodTrainOnly, schemas.MethodAllPool, schemas.MethodDCD}
	for _, c := range []struct {
		models  activities.CheckModelsResult
		trainer bool
		want    int
	}{
		{same, false, 0},
		{other, false, 7},
		{same, true, 3 * (3 + 2)}, // train_only, all_pool, dcd: not none
		{other, true, 7 + 3*(3+2)},
	} {
		cfg.Retrain.Trainer = nil
		if c.trainer {
			cfg.Retrain.Trainer = &schemas.Trainer{Command: []string{"train"}}
		}
		if got := embeddedAgain(cfg, c.models, plans); got != c.want {
			t.Errorf("target scanned the pool %v, trainer %v: %d shards embedded again, want %d", c.models.Target.Spec.ModelDigest == "", c.trainer, got, c.want)
		}
	}
}

// A method whose images retraining left out for labels that are no class
// says so under the table, with a few of the labels, and says it scores
// as train_only when none was retrained on.
func TestSkippedLabelsNoted(t *testing.T) {
	if n := skippedNote(activities.RetrainResult{DebugRows: 40}); n != "" || strings.Contains(skippedNote(activities.RetrainResult{SkippedLabels: 1}), "(") {
		t.Errorf("nothing skipped: note %q, want none", n)
	}
	some := skippedNote(activities.RetrainResult{DebugRows: 40, SkippedLabels: 2, SkippedExamples: []string{"cat"}})
	none := skippedNote(activities.RetrainResult{SkippedLabels: 33, SkippedExamples: []string{"digit_1", "digit_8", "digit_3"}})
	for _, c := range []struct {
		note string
		want []string
	}{
		{some, []string{"2 of its images", `target ("cat")`}},
		{none, []string{"33 of its images", `"digit_1", "digit_8", "digit_3", …`, "none of its images was, so it scores as train_only"}},
		{skippedNote(activities.RetrainResult{DebugRows: 1, SkippedLabels: 4}), []string{"4 of its images were not retrained on: their weak label is not a class of the target"}},
		{skippedNote(activities.RetrainResult{DebugRows: 1, SkippedLabels: 1}), []string{"1 of its images was not retrained on: its weak label is not a class of the target"}},
		{skippedNote(activities.RetrainResult{DebugRows: 1, SkippedLabels: 2, SkippedExamples: []string{"", "6"}}), []string{`target (no label, "6")`}},
	} {
		for _, w := range c.want {
			if !strings.Contains(c.note, w) {
				t.Errorf("note %q: want it to say %q", c.note, w)
			}
		}
	}
	for _, c := range []struct {
		r    activities.RetrainResult
		want string
	}{
		{activities.RetrainResult{}, ""},
		{activities.RetrainResult{Unlearned: 1, UnlearnedExamples: []string{"9"}}, `train has no image of class "9": the head never predicts it`},
		{activities.RetrainResult{DebugRows: 40, Unlearned: 5, UnlearnedExamples: []string{"a", "b", "c"}}, `neither train nor the images it added have any image of 5 classes ("a", "b", "c", …): the head never predicts them`},
	} {
		if got := unlearnedNote(c.r); !strings.Contains(got, c.want) || (c.want == "") != (got == "") {
			t.Errorf("unlearnedNote(%+v) = %q, want %q", c.r, got, c.want)
		}
	}
	if got := joinNotes("", "a", "", "b"); got != "a; b" {
		t.Errorf("joinNotes: %q", got)
	}
}

// A method none of whose retrained rows has the error domain names the
// domains they have; one with some, or without ground truth, says nothing.
func TestDomainNoted(t *testing.T) {
	zero, some := 0.0, 0.4
	note := domainNote(activities.RetrainResult{Precision: &zero, Domains: []string{"clean", "invert"}}, "inverted")
	if !strings.Contains(note, `domain "inverted"`) || !strings.Contains(note, `"clean", "invert"`) {
		t.Errorf("note %q: want it to name the domain asked for and the rows'", note)
	}
	for _, r := range []activities.RetrainResult{{Precision: &some, Domains: []string{"clean"}}, {}} {
		if n := domainNote(r, "inverted"); n != "" {
			t.Errorf("%+v: note %q, want none", r, n)
		}
	}
}

// The pool's and train's plans check their labels against the classes only
// where a method retrains on them: a pass comparing none and train_only
// uses no pool label, and one of none alone no train label.
func TestPlanInputClasses(t *testing.T) {
	cfg := validConfig()
	cfg.Classes = []string{"a", "b"}
	sets := map[string]schemas.Dataset{activities.Pool: cfg.Data.Pool, activities.Train: cfg.Data.Train}
	for _, c := range []struct {
		compare     []string
		pool, train bool
	}{
		{[]string{schemas.MethodNone, schemas.MethodTrainOnly, schemas.MethodRandom, schemas.MethodAllPool, schemas.MethodDCD}, true, true},
		{[]string{schemas.MethodNone, schemas.MethodDCD + ":wide"}, true, true},
		{[]string{schemas.MethodNone, schemas.MethodTrainOnly}, false, true},
		{[]string{schemas.MethodNone}, false, false},
	} {
		cfg.Compare = c.compare
		pool, train := planInput("r", activities.Pool, cfg, sets), planInput("r", activities.Train, cfg, sets)
		if (pool.Classes != nil) != c.pool || (train.Classes != nil) != c.train {
			t.Errorf("compare %v: pool classes %v, train classes %v; want %v, %v", c.compare, pool.Classes, train.Classes, c.pool, c.train)
		}
	}
}
