package activities

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html/template"

	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/schemas"
)

// ReportInput is what the report shows.
type ReportInput struct {
	Run        string
	Config     schemas.Config
	Eval       Eval
	PoolShards int
	Similarity ModelRef
}

// ReportResult says where the report and the rejects list are.
type ReportResult struct {
	ReportKey  string
	RejectsKey string
	Rejects    int
}

// Report writes runs/<id>/rejects.csv (every pool image skipped, with the
// reason) and runs/<id>/report.html.
func (a *Activities) Report(ctx context.Context, in ReportInput) (ReportResult, error) {
	res := ReportResult{ReportKey: RunKey(in.Run, "report.html"), RejectsKey: RunKey(in.Run, "rejects.csv")}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"uri", "reason"})
	for i := 0; i < in.PoolShards; i++ {
		shard, err := a.readShard(ctx, ShardKey(in.Run, Pool, i))
		if err != nil {
			return res, err
		}
		rk := rejectsKey(features.Key(in.Similarity.Spec, shard.Digest()))
		data, err := store.ReadAll(ctx, a.Bucket, rk)
		if err != nil {
			return res, store.Classify(err, rk)
		}
		var rejects []embed.Reject
		if err := json.Unmarshal(data, &rejects); err != nil {
			return res, fmt.Errorf("activities: %s: %w", rk, err)
		}
		for _, r := range rejects {
			w.Write([]string{r.URI, r.Reason})
		}
		res.Rejects += len(rejects)
	}
	w.Flush()
	if err := store.WriteAll(ctx, a.Bucket, res.RejectsKey, buf.Bytes()); err != nil {
		return res, err
	}

	cfg, _ := json.MarshalIndent(in.Config, "", "  ")
	buf.Reset()
	if err := reportPage.Execute(&buf, map[string]any{
		"Run": in.Run, "Eval": in.Eval, "Rejects": res.Rejects, "Config": string(cfg),
	}); err != nil {
		return res, fmt.Errorf("activities: report: %w", err)
	}
	return res, store.WriteAll(ctx, a.Bucket, res.ReportKey, buf.Bytes())
}

var reportPage = template.Must(template.New("report").Funcs(template.FuncMap{
	"pct": func(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) },
	"prec": func(p *float64) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", *p)
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DCD pass {{.Run}}</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}th{background:#f4f4f4}pre{background:#f8f8f8;padding:1em;overflow:auto}</style>
</head><body>
<h1>Debug pass {{.Run}}</h1>
<table><tr><th>method</th><th>test accuracy</th><th>E_heldout accuracy</th><th>debug-train size</th><th>selection precision</th></tr>
{{range .Eval.Methods}}<tr><td>{{.Method}}</td><td>{{pct .TestAccuracy}}</td><td>{{pct .HeldoutAccuracy}}</td><td>{{.DebugTrainSize}}</td><td>{{prec .SelectionPrecision}}</td></tr>
{{end}}</table>
<p>{{.Eval.TestImages}} test images, {{.Eval.HeldoutImages}} E_heldout images; {{.Rejects}} pool images skipped (see rejects.csv).</p>
<h2>Config</h2><pre>{{.Config}}</pre>
</body></html>
`))
