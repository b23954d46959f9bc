"""ActivityNet-Entities `eval_grd_anet_entities.py` (GROVE's eval_anet.py), restated with its torch code,
lemmas from a function instead of a CoreNLP server. The reference evaluation.anet_entities is checked against."""

import itertools
from collections import defaultdict

import numpy as np
import torch


def bbox_overlaps_batch(anchors, gt_boxes, frm_mask):
    batch_size, n, k = gt_boxes.size(0), anchors.size(1), gt_boxes.size(1)
    anchors, gt_boxes = anchors[:, :, :5].contiguous(), gt_boxes[:, :, :5].contiguous()
    gt_x, gt_y = gt_boxes[:, :, 2] - gt_boxes[:, :, 0] + 1, gt_boxes[:, :, 3] - gt_boxes[:, :, 1] + 1
    gt_area = (gt_x * gt_y).view(batch_size, 1, k)
    an_x, an_y = anchors[:, :, 2] - anchors[:, :, 0] + 1, anchors[:, :, 3] - anchors[:, :, 1] + 1
    an_area = (an_x * an_y).view(batch_size, n, 1)
    gt_zero, an_zero = (gt_x == 1) & (gt_y == 1), (an_x == 1) & (an_y == 1)
    boxes = anchors.view(batch_size, n, 1, 5).expand(batch_size, n, k, 5)
    query = gt_boxes.view(batch_size, 1, k, 5).expand(batch_size, n, k, 5)
    iw = torch.min(boxes[:, :, :, 2], query[:, :, :, 2]) - torch.max(boxes[:, :, :, 0], query[:, :, :, 0]) + 1
    iw[iw < 0] = 0
    ih = torch.min(boxes[:, :, :, 3], query[:, :, :, 3]) - torch.max(boxes[:, :, :, 1], query[:, :, :, 1]) + 1
    ih[ih < 0] = 0
    ua = an_area + gt_area - (iw * ih)
    overlaps = iw * ih / ua
    overlaps *= (1 - frm_mask).type(overlaps.type())
    overlaps.masked_fill_(gt_zero.view(batch_size, 1, k).expand(batch_size, n, k), 0)
    overlaps.masked_fill_(an_zero.view(batch_size, n, 1).expand(batch_size, n, k), -1)
    return overlaps


def _hit(pred_boxes, ref_bbox, thresh=0.5):
    pred_bbox = torch.cat((torch.Tensor(pred_boxes)[:, :4], torch.Tensor(range(10)).unsqueeze(-1)), dim=1)
    frm_mask = torch.from_numpy((np.tile(pred_bbox[:, 4].numpy().reshape(-1, 1), (1, ref_bbox.shape[0]))
                                 != np.tile(ref_bbox[:, 4].numpy(), (pred_bbox.shape[0], 1))).astype("uint8"))
    overlap = bbox_overlaps_batch(pred_bbox[:, :5].unsqueeze(0), ref_bbox[:, :5].unsqueeze(0), frm_mask.unsqueeze(0))
    return 1 if torch.max(overlap) > thresh else 0


def _ref_bbox_all(ann):
    return torch.cat((torch.Tensor(ann["process_bnd_box"]), torch.Tensor(ann["frame_ind"]).unsqueeze(-1)), dim=1)


def gt_grd_eval(ref, pred):
    results = defaultdict(list)
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0:
                continue
            ref_bbox_all = _ref_bbox_all(ann)
            for idx in set(itertools.chain.from_iterable(ann["process_idx"])):
                sel_idx = [ind for ind, i in enumerate(ann["process_idx"]) if idx in i]
                class_name = ann["process_clss"][sel_idx[0]][ann["process_idx"][sel_idx[0]].index(idx)]
                if vid not in pred or seg not in pred[vid] or idx not in pred[vid][seg]["idx_in_sent"]:
                    results[class_name].append(0)
                else:
                    pred_ind = pred[vid][seg]["idx_in_sent"].index(idx)
                    results[class_name].append(_hit(pred[vid][seg]["bbox_for_all_frames"][pred_ind], ref_bbox_all[sel_idx]))
    return np.mean([sum(hm) * 1.0 / len(hm) for hm in results.values()])


def grd_eval(ref, pred, lemma, mode):
    vocab_in_split, prec, prec_per_sent = set(), defaultdict(list), defaultdict(list)
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0 or vid not in pred or seg not in pred[vid]:
                continue
            tmp = []
            ref_bbox_all = _ref_bbox_all(ann)
            idx_in_sent = {}
            for box_idx, cls_lst in enumerate(ann["process_clss"]):
                vocab_in_split.update(set(cls_lst))
                for cls_idx, cls in enumerate(cls_lst):
                    idx_in_sent[cls] = idx_in_sent.get(cls, []) + [ann["process_idx"][box_idx][cls_idx]]
            sent_idx = set(itertools.chain.from_iterable(ann["process_idx"]))
            exclude_obj = {lemma(t): 1 for i, t in enumerate(ann["tokens"]) if i not in sent_idx and t != ""}
            for pred_idx, class_name in enumerate(pred[vid][seg]["clss"]):
                if class_name in idx_in_sent:
                    gt_idx = min(idx_in_sent[class_name])
                    sel_idx = [i for i, x in enumerate(ann["process_idx"]) if gt_idx in x]
                    hit = _hit(pred[vid][seg]["bbox_for_all_frames"][pred_idx], ref_bbox_all[sel_idx])
                    prec[class_name].append(hit)
                    tmp.append(hit)
                elif lemma(class_name) in exclude_obj:
                    pass
                elif mode == "all":
                    prec[class_name].append(0)
                    tmp.append(0)
            prec_per_sent[vid + seg] = tmp
    recall, recall_per_sent = defaultdict(list), defaultdict(list)
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0:
                continue
            tmp = []
            ref_bbox_all = _ref_bbox_all(ann)
            for gt_idx in set(itertools.chain.from_iterable(ann["process_idx"])):
                sel_idx = [i for i, x in enumerate(ann["process_idx"]) if gt_idx in x]
                class_name = ann["process_clss"][sel_idx[0]][ann["process_idx"][sel_idx[0]].index(gt_idx)]
                if vid not in pred or seg not in pred[vid]:
                    recall[class_name].append(0)
                    tmp.append(0)
                elif class_name in pred[vid][seg]["clss"]:
                    pred_idx = pred[vid][seg]["clss"].index(class_name)
                    hit = _hit(pred[vid][seg]["bbox_for_all_frames"][pred_idx], ref_bbox_all[sel_idx])
                    recall[class_name].append(hit)
                    tmp.append(hit)
                elif mode == "all":
                    recall[class_name].append(0)
                    tmp.append(0)
            recall_per_sent[vid + seg] = tmp
    num_vocab = len(vocab_in_split)
    prec_cls = np.sum([sum(hm) * 1.0 / len(hm) for hm in prec.values()]) * 1.0 / num_vocab
    recall_cls = np.sum([sum(hm) * 1.0 / len(hm) for hm in recall.values()]) * 1.0 / num_vocab
    f1_cls = 2.0 * prec_cls * recall_cls / (prec_cls + recall_cls)
    skipped, f1 = 0, []
    for seg_id, prec_list in prec_per_sent.items():
        if recall_per_sent[seg_id] == []:
            skipped += 1
            continue
        p = 0 if prec_list == [] else np.mean(prec_list)
        r = np.mean(recall_per_sent[seg_id])
        f1.append(0.0 if p == 0.0 and r == 0.0 else 2.0 * p * r / (p + r))
    num_predictions = sum(len(s) for s in pred.values())
    return f1_cls, np.sum(f1) / (num_predictions - skipped)
