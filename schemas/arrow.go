package schemas

import "github.com/apache/arrow/go/v15/arrow"

// Vector is one named float32 column of a feature file, with its width.
type Vector struct {
	Name string
	Dim  int
}

// Features is the schema of a feature file (features/<spec>/<shard>.arrow):
// one row per image that decoded, the image's identity, then one
// fixed-size float32 list per model output (e.g. "features", "logits").
func Features(vectors ...Vector) *arrow.Schema {
	fields := []arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "uri", Type: arrow.BinaryTypes.String},
		{Name: "label", Type: arrow.BinaryTypes.String},
		{Name: "domain", Type: arrow.BinaryTypes.String},
	}
	for _, v := range vectors {
		fields = append(fields, arrow.Field{Name: v.Name, Type: arrow.FixedSizeListOf(int32(v.Dim), arrow.PrimitiveTypes.Float32)})
	}
	return arrow.NewSchema(fields, nil)
}

// Neighbors is the schema of partial and merged top-k files
// (runs/<id>/topk/<shard>.arrow, runs/<id>/neighbors.arrow): for each query,
// its nearest pool images, nearest first, ties broken by pool id.
var Neighbors = arrow.NewSchema([]arrow.Field{
	{Name: "query", Type: arrow.PrimitiveTypes.Int32},
	{Name: "rank", Type: arrow.PrimitiveTypes.Int32},
	{Name: "distance", Type: arrow.PrimitiveTypes.Float32},
	{Name: "pool_id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "uri", Type: arrow.BinaryTypes.String},
	{Name: "label", Type: arrow.BinaryTypes.String},
	{Name: "domain", Type: arrow.BinaryTypes.String},
}, nil)
