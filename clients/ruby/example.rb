# Calls searchsvc the way a backend service does: creates a collection, streams documents through BulkIndex
# and checks every ack, searches with a deadline and prints each hit's explanation, searches with a range filter
# on typed metadata, shows the status of a bad request, streams an extractive answer, sends a PDF as it is and finds
# it by page, and deletes the collection.
#
# Usage: ruby -I build example.rb [address=127.0.0.1:50051] [collection=ruby-example] [pdf=examples/quickstart/science-notes.pdf]
require "grpc"
require "searchsvc/v1/searchsvc_services_pb"

V1 = Searchsvc::V1
address = ARGV[0] || "127.0.0.1:50051"
collection = ARGV[1] || "ruby-example"
pdf = ARGV[2] || "examples/quickstart/science-notes.pdf"
stub = V1::SearchService::Stub.new(address, :this_channel_is_insecure)

# Typed metadata: the year as an integer and New Year's Day as a timestamp.
def new_year(year)
  Searchsvc::V1::MetadataValue.new(timestamp_value: Google::Protobuf::Timestamp.new(seconds: Time.utc(year, 1, 1).to_i))
end

def published(year)
  { "year" => Searchsvc::V1::MetadataValue.new(int_value: year), "published" => new_year(year) }
end

DOCUMENTS = [
  V1::Document.new(id: "vaccine", title: "Vaccines", text: "Vaccines train the immune system to recognise a pathogen before infection.", typed_metadata: published(1998)),
  V1::Document.new(id: "coffee", title: "Coffee", text: "Coffee beans are roasted seeds; caffeine is a stimulant.", typed_metadata: published(2004)),
  V1::Document.new(id: "volcano", title: "Volcanoes", text: "A volcano erupts when magma rises through the crust.", typed_metadata: published(2015)),
  V1::Document.new(id: "empty", title: "Rejected", text: "   "), # rejected by the server: the ack names the field
  V1::Document.new(id: "tides", title: "Tides", text: "Tides are caused by the gravitational pull of the moon.", typed_metadata: published(2020)),
  V1::Document.new(id: "antibody", title: "Antibodies", text: "Antibodies bind antigens and mark pathogens for the immune system.", typed_metadata: published(2012)),
].freeze
BATCH_SIZE = 2
WINDOW = 2 # batches in flight before waiting for an ack

created = stub.create_collection(
  V1::CreateCollectionRequest.new(name: collection, config: V1::CollectionConfig.new(language: "en", refresh_interval_ms: -1)),
  deadline: Time.now + 60,
)
puts "created collection #{created.name} (language #{created.config.language}, analyzer #{created.config.analyzer})"

# BulkIndex: grpc-ruby sends whatever the request enumerator yields from its own thread; a queue feeds it, so the
# main thread can stop sending while WINDOW batches are unacknowledged.
queue = Queue.new
requests = Enumerator.new { |y| while (request = queue.pop) != :done; y << request; end }
acks = stub.bulk_index(requests, deadline: Time.now + 120)
sent = 0
acked = 0
indexed = 0
receive = lambda do
  ack = acks.next
  acked += 1
  raise "ack for batch #{ack.sequence}, expected #{acked}" unless ack.sequence == acked
  indexed += ack.indexed_count
  errors = ack.errors.map { |e| " (#{e.field}: code #{e.code})" }.join
  puts "ack #{ack.sequence}: indexed #{ack.indexed_count}, failed #{ack.failed_count}#{errors}"
end
DOCUMENTS.each_slice(BATCH_SIZE) do |batch|
  sent += 1
  queue << V1::BulkIndexRequest.new(collection: collection, documents: batch, sequence: sent)
  receive.call if sent - acked >= WINDOW
end
queue << :done
receive.call while acked < sent
puts "indexed #{indexed} documents in #{acked} acks"

response = stub.search(
  V1::SearchRequest.new(collection: collection, query: "how does the immune system recognise pathogens", top_k: 3, explain: true),
  deadline: Time.now + 5,
)
response.hits.each_with_index do |hit, i|
  e = hit.explanation
  dense = e.dense ? format(" dense=#%d/%.3f", e.dense.rank, e.dense.score) : ""
  keyword = e.keyword ? format(" keyword=#%d/%.3f", e.keyword.rank, e.keyword.score) : ""
  puts format("hit %d: %s score=%.4f%s%s", i + 1, hit.document_id, hit.score, dense, keyword)
end
puts format("search took %.1f ms on the server (query language %s)", response.timings.total_ms, response.query_language)

# Documents published from 2010 on (a range on a timestamp), applied inside both legs.
since = V1::FilterClause.new(key: "published", range: V1::Range.new(gte: new_year(2010)))
filtered = stub.search(
  V1::SearchRequest.new(collection: collection, query: "immune system", top_k: 5, where: V1::Filter.new(must: [since])),
  deadline: Time.now + 5,
)
puts "range filter: #{filtered.hits.map { |h| "#{h.document_id} #{h.typed_metadata["year"].int_value}" }.sort.join(", ")}"

{ "bad request" => V1::SearchRequest.new(collection: collection, query: "  "),
  "missing collection" => V1::SearchRequest.new(collection: "no-such-collection", query: "x") }.each do |label, request|
  stub.search(request, deadline: Time.now + 60)
  raise "#{label}: expected an error"
rescue GRPC::BadStatus => e
  puts "#{label}: code #{e.code} (#{e.class.name.split('::').last}): #{e.details}"
end

deltas = 0
answer = V1::AnswerRequest.new(search: V1::SearchRequest.new(collection: collection, query: "What do antibodies do?", top_k: 3), extractive: true)
stub.stream_answer(answer, deadline: Time.now + 60).each do |event|
  case event.event
  when :context then puts "answer context: #{event.context.hits.size} hits"
  when :delta then deltas += 1
  when :done
    puts "answer (#{event.done.kind}, #{deltas} deltas): #{event.done.answer}"
    event.done.citations.each { |c| puts "cited #{c.marker} #{c.document_id}" }
  end
end

# A PDF as it is: the server reads it page by page, and acks once it is searchable (refresh).
notes = V1::Document.new(id: "notes", content: File.binread(pdf), content_type: "application/pdf", filename: File.basename(pdf))
ack = stub.bulk_index([V1::BulkIndexRequest.new(collection: collection, documents: [notes], refresh: true)].each,
                      deadline: Time.now + 120).first
puts "pdf: indexed #{ack.indexed_count}, failed #{ack.failed_count}"
hit = stub.search(V1::SearchRequest.new(collection: collection, query: "what makes the tides rise and fall", top_k: 1,
                                        filter: { "source" => notes.filename }), deadline: Time.now + 60).hits.first
puts "pdf hit: #{hit.document_id} #{hit.typed_metadata['source'].string_value} p.#{hit.typed_metadata['page'].int_value}"

stub.delete_collection(V1::DeleteCollectionRequest.new(name: collection), deadline: Time.now + 60)
puts "deleted collection #{collection}"
