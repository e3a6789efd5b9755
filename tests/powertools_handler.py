"""A Lambda handler written exactly as Powertools for AWS Lambda (Python) documents it, unmodified.

Used by tests/test_lambda_compat.py to show it runs under ``--handler-style lambda``.  A record
fails when its NewImage has ``fail`` set true, or when its ``pk`` is listed (comma-separated) in
the ``POWERTOOLS_TEST_FAIL_KEYS`` environment variable.
"""

import os

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
tracer = Tracer()
logger = Logger()


@tracer.capture_method
def record_handler(record: DynamoDBRecord):
    if record.dynamodb and record.dynamodb.new_image:
        image = record.dynamodb.new_image
        logger.info(image)
        fail_keys = {k for k in os.environ.get("POWERTOOLS_TEST_FAIL_KEYS", "").split(",") if k}
        if image.get("fail") is True or image.get("pk") in fail_keys:
            raise ValueError(f"cannot process {image.get('pk')}")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event, context: LambdaContext):
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
