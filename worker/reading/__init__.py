"""The read path: DynamoDB Streams calls (:mod:`.streams`) and the records they return (:mod:`.records`)."""
