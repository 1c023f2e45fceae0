package schemas

import "github.com/apache/arrow/go/v15/arrow"

// Features is the schema of a feature file (features/<spec>/<shard>.arrow):
// one row per image that decoded, its key, then one fixed-size list per
// model output column (e.g. "features", "logits"), of float32 values or,
// when storedAs is Float16, of float16 values.
func Features(columns []string, dims []int, storedAs string) *arrow.Schema {
	var elem arrow.DataType = arrow.PrimitiveTypes.Float32
	if storedAs == Float16 {
		elem = arrow.FixedWidthTypes.Float16
	}
	fields := []arrow.Field{{Name: "uri", Type: arrow.BinaryTypes.String}}
	for i, c := range columns {
		fields = append(fields, arrow.Field{Name: c, Type: arrow.FixedSizeListOf(int32(dims[i]), elem)})
	}
	return arrow.NewSchema(fields, nil)
}

// Neighbors is the schema of partial and merged top-k files
// (runs/<id>/topk/<shard>.arrow, runs/<id>/topk-ranges/<scan>/<a>-<b>.arrow,
// runs/<id>/neighbors.arrow): for each query, its nearest pool images,
// nearest first, ties broken by pool id. version is the pool item's (its
// manifest's, or the listing's size and time), which a selection carries
// into the features cache's keys; files written before it have none.
var Neighbors = arrow.NewSchema([]arrow.Field{
	{Name: "query", Type: arrow.PrimitiveTypes.Int32},
	{Name: "rank", Type: arrow.PrimitiveTypes.Int32},
	{Name: "distance", Type: arrow.PrimitiveTypes.Float32},
	{Name: "pool_id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "uri", Type: arrow.BinaryTypes.String},
	{Name: "label", Type: arrow.BinaryTypes.String},
	{Name: "domain", Type: arrow.BinaryTypes.String},
	{Name: "version", Type: arrow.BinaryTypes.String},
}, nil)
